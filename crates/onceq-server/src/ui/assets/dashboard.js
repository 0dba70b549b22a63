// onceq dashboard: live counts and rates on the overview, and small conveniences elsewhere.
// Loaded from /ui/assets/dashboard.js (the CSP allows no inline script). Every value is set
// with textContent or as an SVG attribute, never as HTML.
"use strict";

(function () {
  var POLL_MS = 1500;          // how often the overview asks for counts
  var HISTORY_MS = 5 * 60000;  // how far back the charts reach
  var SVG = "http://www.w3.org/2000/svg";

  function field(row, name) { return row.querySelector('[data-field="' + name + '"]'); }

  function sparkline(cell, points) {
    var width = 120, height = 24;
    var svg = cell.firstChild;
    if (!svg) {
      svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("width", String(width));
      svg.setAttribute("height", String(height));
      svg.setAttribute("viewBox", "0 0 " + width + " " + height);
      svg.setAttribute("role", "img");
      ["enqueued", "acked"].forEach(function (series) {
        var line = document.createElementNS(SVG, "polyline");
        line.setAttribute("fill", "none");
        line.setAttribute("stroke-width", "1.5");
        line.setAttribute("stroke", series === "enqueued" ? "#2c6fbb" : "#2e8b57");
        line.setAttribute("data-series", series);
        svg.appendChild(line);
      });
      cell.appendChild(svg);
    }
    // The chart spans what has been seen since the page opened, up to HISTORY_MS.
    var now = points.length ? points[points.length - 1].at : Date.now();
    var span = points.length ? Math.min(Math.max(now - points[0].at, 10000), HISTORY_MS) : HISTORY_MS;
    var max = 1;
    points.forEach(function (p) { max = Math.max(max, p.enqueued, p.acked); });
    ["enqueued", "acked"].forEach(function (series) {
      var coords = points.map(function (p) {
        var x = width - ((now - p.at) / span) * width;
        var y = height - 1 - (p[series] / max) * (height - 2);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      svg.querySelector('[data-series="' + series + '"]').setAttribute("points", coords.join(" "));
    });
    cell.setAttribute("title", "per second, up to the last 5 minutes (blue: enqueued, green: acked)");
  }

  function overview(table) {
    var rows = new Map();
    Array.prototype.forEach.call(table.querySelectorAll("tbody tr"), function (row) {
      rows.set(row.getAttribute("data-queue"), { row: row, last: null, history: [] });
    });
    var after = table.getAttribute("data-after") || "";
    function poll() {
      var url = "/ui/overview.json" + (after ? "?after=" + encodeURIComponent(after) : "");
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (live) {
          if (!live) return;
          live.queues.forEach(function (q) {
            var entry = rows.get(q.name);
            if (!entry) return;
            var row = entry.row;
            field(row, "ready").textContent = String(q.ready);
            field(row, "scheduled").textContent = String(q.scheduled);
            field(row, "leased").textContent = String(q.leased);
            field(row, "dead-count").textContent = String(q.dead);
            field(row, "paused").textContent = q.paused ? "paused" : "running";
            if (entry.last) {
              var seconds = Math.max((live.at_ms - entry.last.at_ms) / 1000, 0.001);
              var rate = function (now, then) { return Math.max(now - then, 0) / seconds; };
              var point = {
                at: live.at_ms,
                enqueued: rate(q.enqueued_total, entry.last.enqueued_total),
                acked: rate(q.acked_total, entry.last.acked_total),
                dead: rate(q.dead_total, entry.last.dead_total)
              };
              field(row, "enqueued-rate").textContent = point.enqueued.toFixed(1);
              field(row, "acked-rate").textContent = point.acked.toFixed(1);
              field(row, "dead-rate").textContent = point.dead.toFixed(1);
              entry.history.push(point);
              while (entry.history.length && entry.history[0].at < live.at_ms - HISTORY_MS) entry.history.shift();
              sparkline(field(row, "chart"), entry.history);
            }
            entry.last = { at_ms: live.at_ms, enqueued_total: q.enqueued_total, acked_total: q.acked_total, dead_total: q.dead_total };
          });
        })
        .catch(function () { /* the next poll tries again */ })
        .then(function () { setTimeout(poll, POLL_MS); });
    }
    poll();
  }

  function selectAll(box) {
    box.addEventListener("change", function () {
      Array.prototype.forEach.call(document.querySelectorAll('#dead input[name="id"]'), function (b) { b.checked = box.checked; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("queues");
    if (table) overview(table);
    var box = document.getElementById("select-all");
    if (box) selectAll(box);
  });
})();
