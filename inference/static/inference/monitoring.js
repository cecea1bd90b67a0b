/* The admin's monitoring charts: uPlot (vendored) over the per-minute rollups.
 *
 * Each `.mon-charts` element names the JSON <script> holding its columns (data-source);
 * one chart is drawn per `.mon-chart` child, by its data-kind. The tables under the charts
 * hold the same figures, so the page reads without JavaScript.
 */
(function () {
  "use strict";

  var KINDS = {
    rps: {title: "Requests/s", unit: "req/s", series: [["rps", "requests/s", "#2563eb"]]},
    latency: {title: "Latency (ms)", unit: "ms", series: [
      ["p50_ms", "p50", "#16a34a"], ["p95_ms", "p95", "#d97706"], ["p99_ms", "p99", "#dc2626"]]},
    errors: {title: "Error rate (%)", unit: "%", series: [
      ["error_rate", "4xx + 5xx", "#dc2626"], ["server_error_rate", "5xx", "#7c3aed"]]},
    batch: {title: "Mean batch size", unit: "instances", series: [["mean_batch", "mean batch", "#0891b2"]]},
    queue: {title: "Queue depth", unit: "requests", series: [
      ["mean_queue", "mean", "#0d9488"], ["max_queue", "max", "#9333ea"]]}
  };

  function fmt(v) {
    if (v == null) { return "–"; }
    return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function draw(el, data) {
    var kind = KINDS[el.getAttribute("data-kind")];
    if (!kind) { return null; }
    var columns = [data.t];
    var series = [{}];
    kind.series.forEach(function (s) {
      columns.push(data[s[0]]);
      // Points too: a minute with traffic between two without is a single point, not a line.
      series.push({label: s[1], stroke: s[2], width: 1.5, spanGaps: false, points: {show: true, size: 4, fill: s[2]},
                   value: function (u, v) { return fmt(v); }});
    });
    var width = Math.max(260, Math.floor(el.clientWidth || 360));
    // Axes are drawn on the canvas: give them the page's text colour (light and dark themes).
    var fg = window.getComputedStyle(el).getPropertyValue("color") || "#333";
    var grid = {stroke: "rgba(128, 128, 128, 0.25)", width: 1};
    var chart = new uPlot({
      title: kind.title,
      width: width,
      height: 170,
      series: series,
      scales: {x: {time: true}, y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}},
      axes: [{stroke: fg, grid: grid, ticks: grid},
             {stroke: fg, grid: grid, ticks: grid, size: 50, values: function (u, vals) { return vals.map(fmt); }}],
      legend: {live: true},
      cursor: {drag: {x: false, y: false}}
    }, columns, el);
    el.setAttribute("data-drawn", "true");
    return chart;
  }

  function init() {
    if (typeof uPlot === "undefined") { return; }
    var charts = [];
    document.querySelectorAll(".mon-charts").forEach(function (group) {
      var source = document.getElementById(group.getAttribute("data-source"));
      if (!source) { return; }
      var data = JSON.parse(source.textContent);
      group.querySelectorAll(".mon-chart").forEach(function (el) {
        var chart = draw(el, data);
        if (chart) { charts.push([el, chart]); }
      });
      group.classList.add("mon-ready");
    });
    var pending = null;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(function () {
        charts.forEach(function (pair) {
          pair[1].setSize({width: Math.max(260, Math.floor(pair[0].clientWidth)), height: 170});
        });
      }, 150);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
