//! Damage made by hand to an embedded store's data file, for tests of how onceq reports it.

/// Points the next-page pointer of one overflow page of the SQLite file at `path` (a page that
/// holds only `fill` bytes past its pointer: a big payload of `fill`) past the end of the file,
/// which SQLite reports as a malformed database image once a read follows the chain. Only a read
/// of that payload meets it; the checks at open do not. Returns how many such pages there were.
///
/// Panics when the file holds fewer than two such pages: write a payload of a few hundred KB of
/// `fill` first, and close the store (so the file holds it, not the write-ahead log).
pub fn overflow_page(path: &std::path::Path, fill: u8) -> usize {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65_536,
        n => usize::from(n),
    };
    let overflow: Vec<usize> = (1..bytes.len() / page_size)
        .filter(|&page| bytes[page * page_size + 4..(page + 1) * page_size].iter().all(|&b| b == fill))
        .collect();
    assert!(overflow.len() >= 2, "no overflow pages of a big payload of {fill:#x} found in {}", path.display());
    let at = overflow[overflow.len() / 2] * page_size;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    overflow.len()
}
