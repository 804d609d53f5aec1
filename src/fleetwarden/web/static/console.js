// FleetWarden console: draws the uPlot charts whose data the page embeds as JSON
// (<script type="application/json" id="NAME-data"> next to <div data-chart="NAME">).
// No inline scripts: the Content-Security-Policy allows scripts from 'self' only.
(function () {
  "use strict";
  var COLORS = ["#2457c5", "#e3551b", "#1b8a3a", "#9b59b6"];

  function options(spec, width) {
    var series = [{}];
    spec.y.forEach(function (pair, k) {
      series.push({ label: pair[1], stroke: COLORS[k % COLORS.length], width: 2,
                    fill: spec.kind === "bars" ? COLORS[k % COLORS.length] + "66" : undefined,
                    paths: spec.kind === "bars" && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 80] }) : undefined,
                    points: { size: 6 }, spanGaps: false });
    });
    var opts = { width: width, height: 220, series: series, scales: { x: { time: spec.kind === "time" } } };
    if (spec.kind === "time") {
      // one sample would stretch the axis over years: show half a day either side instead
      opts.scales.x.range = function (u, min, max) { return min === max ? [min - 43200, max + 43200] : [min, max]; };
    }
    if (spec.kind === "bars") {
      opts.axes = [{ values: function (u, vals) { return vals.map(function (v) { return spec.labels[v] || ""; }); } }, {}];
      opts.scales.x.range = function () { return [-0.5, spec.labels.length - 0.5]; };
    }
    return opts;
  }

  function draw(el) {
    if (el.dataset.drawn || typeof uPlot === "undefined") { return; }
    var source = document.getElementById(el.dataset.chart + "-data");
    if (!source) { return; }
    var payload = JSON.parse(source.textContent);
    var data = [payload.series.x];
    payload.spec.y.forEach(function (pair) { data.push(payload.series[pair[0]]); });
    el.dataset.drawn = "1";
    new uPlot(options(payload.spec, Math.max(300, el.clientWidth || 600)), data, el);
  }

  function drawAll() { document.querySelectorAll("[data-chart]").forEach(draw); }
  document.addEventListener("DOMContentLoaded", drawAll);
  document.addEventListener("htmx:afterSwap", drawAll);
})();
