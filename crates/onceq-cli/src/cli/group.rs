//! `onceq group list QUEUE` and `onceq group describe QUEUE GROUP`: the consumer groups of a
//! `per_key` queue, their members, and who owns each partition (docs/semantics.md, "Consumer
//! groups").

use clap::{Args, Subcommand};
use onceq_core::api::GroupList;
use onceq_core::group::{GroupInfo, GroupName, MemberId};
use onceq_core::{Ordering, QueueName, Store};

use super::table::{self, Align, Table};
use super::{block_on, Connection, Output, Session};
use crate::error::CliError;

/// Hex digits of a member id shown in the partition table: enough to tell a group's members
/// apart at a glance; the members table above it has the whole id.
const MEMBER_ID_SHORT_CHARS: usize = 8;

/// `onceq group ...`.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: GroupCommand,
}

/// The consumer-group commands.
#[derive(Debug, Clone, Subcommand)]
pub enum GroupCommand {
    /// List a queue's consumer groups: generation, members, partitions owned and moving, total lag.
    List {
        /// The queue (a `per_key` queue: only those have groups).
        queue: QueueName,
    },
    /// Show a consumer group: its members with their partitions (and those they are giving
    /// up), and every partition with its owner, the member it is moving to, and its load.
    Describe {
        /// The queue.
        queue: QueueName,
        /// The group.
        group: GroupName,
    },
}

/// Runs a consumer-group command.
pub fn run(args: &GroupArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        match &args.command {
            GroupCommand::List { queue } => {
                grouped(&session, queue).await?;
                let groups = session.client.group_list(queue).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&GroupList { groups }),
                    Output::Table => {
                        out!("{}", groups_table(&groups).render());
                        Ok(())
                    }
                }
            }
            GroupCommand::Describe { queue, group } => {
                grouped(&session, queue).await?;
                let info = session.client.group_get(queue, group).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&info),
                    Output::Table => {
                        out!("{}", describe(queue, &info));
                        Ok(())
                    }
                }
            }
        }
    })
}

/// Checks that `queue` exists and is `per_key`, so that an operator asking about the groups of
/// an unordered queue learns why it has none.
async fn grouped(session: &Session, queue: &QueueName) -> Result<(), CliError> {
    let info = session.client.queue_get(queue).await.map_err(|e| session.failure(e))?;
    if info.config.ordering != Ordering::PerKey {
        return Err(CliError::Failed(format!(
            "queue {queue} is not per_key, so it has no consumer groups: groups share the partitions of a \
             per_key queue (onceq queue set {queue} --ordering per_key, while it holds no job)"
        )));
    }
    Ok(())
}

/// One row per group: generation, members, partitions (all, owned, moving) and total lag.
pub fn groups_table(groups: &[GroupInfo]) -> Table {
    let mut table = Table::new(&[
        ("GROUP", Align::Left),
        ("GENERATION", Align::Right),
        ("MEMBERS", Align::Right),
        ("PARTITIONS", Align::Right),
        ("OWNED", Align::Right),
        ("MOVING", Align::Right),
        ("LAG", Align::Right),
    ]);
    for group in groups {
        let owned = group.partitions.iter().filter(|p| p.owner.is_some()).count();
        let moving = group.partitions.iter().filter(|p| p.moving_to.is_some()).count();
        let lag: u64 = group.partitions.iter().map(|p| p.lag).sum();
        table.row(vec![
            group.group.to_string(),
            group.generation.to_string(),
            group.members.len().to_string(),
            group.partitions.len().to_string(),
            owned.to_string(),
            moving.to_string(),
            lag.to_string(),
        ]);
    }
    table
}

/// A group as a record (queue, group, generation), its members table and its partitions table.
pub fn describe(queue: &QueueName, group: &GroupInfo) -> String {
    let fields = [
        ("queue", queue.to_string()),
        ("group", group.group.to_string()),
        ("generation", group.generation.to_string()),
        ("members", group.members.len().to_string()),
    ];
    let mut out = table::record(&fields);
    out.push('\n');
    let mut members = Table::new(&[
        ("MEMBER", Align::Left),
        ("NAME", Align::Left),
        ("PARTITIONS", Align::Left),
        ("REVOKING", Align::Left),
        ("SESSION_TIMEOUT", Align::Right),
        ("JOINED_AT", Align::Left),
        ("LAST_HEARTBEAT_AT", Align::Left),
    ]);
    for member in &group.members {
        members.row(vec![
            member.member_id.to_string(),
            member.name.as_deref().map_or_else(|| "-".into(), |name| table::one_line(name, table::CELL_CHARS_MAX)),
            partition_list(&member.partitions),
            partition_list(&member.revoking),
            table::age(member.session_timeout_ms),
            table::time(member.joined_at),
            table::time(member.last_heartbeat_at),
        ]);
    }
    out.push_str(&members.render());
    out.push('\n');
    let mut partitions = Table::new(&[
        ("PARTITION", Align::Right),
        ("OWNER", Align::Left),
        ("MOVING_TO", Align::Left),
        ("LAG", Align::Right),
        ("READY", Align::Right),
        ("OLDEST_READY", Align::Right),
    ]);
    for partition in &group.partitions {
        partitions.row(vec![
            partition.partition.to_string(),
            short_member(partition.owner.as_ref()),
            short_member(partition.moving_to.as_ref()),
            partition.lag.to_string(),
            partition.ready.to_string(),
            table::age_or_dash(partition.oldest_ready_age_ms),
        ]);
    }
    out.push_str(&partitions.render());
    out
}

/// The first hex digits of a member id, `-` for none.
fn short_member(member: Option<&MemberId>) -> String {
    member.map_or_else(|| "-".into(), |m| m.as_str().chars().take(MEMBER_ID_SHORT_CHARS).collect())
}

/// Ascending partitions as ranges, `0-3,6,9-10`; `-` for none.
pub fn partition_list(partitions: &[u32]) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &p in partitions {
        match ranges.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(p) => *end = p,
            _ => ranges.push((p, p)),
        }
    }
    if ranges.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = ranges
        .into_iter()
        .map(|(start, end)| if start == end { start.to_string() } else { format!("{start}-{end}") })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<GroupCommand, clap::Error> {
        Cli::try_parse_from(args).map(|cli| match cli.command {
            Command::Group(group) => group.command,
            other => panic!("{args:?} did not parse as a group command: {other:?}"),
        })
    }

    #[test]
    fn partitions_read_as_ranges() {
        assert_eq!(partition_list(&[]), "-");
        assert_eq!(partition_list(&[4]), "4");
        assert_eq!(partition_list(&[0, 1, 2, 3, 6, 9, 10]), "0-3,6,9-10");
        assert_eq!(partition_list(&[1, 3, 5]), "1,3,5");
    }

    #[test]
    fn describe_takes_a_queue_and_a_valid_group_name() {
        let Ok(GroupCommand::Describe { queue, group }) = parse(&["onceq", "group", "describe", "orders", "billing"])
        else {
            panic!("describe did not parse");
        };
        assert_eq!((queue.as_str(), group.as_str()), ("orders", "billing"));
        let bad = parse(&["onceq", "group", "describe", "orders", "no spaces"]).err();
        assert_eq!(bad.map(|e| e.exit_code()), Some(2));
        let missing = parse(&["onceq", "group", "list"]).err();
        assert_eq!(missing.map(|e| e.exit_code()), Some(2));
    }
}
