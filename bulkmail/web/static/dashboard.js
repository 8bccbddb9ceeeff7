// Draws every chart of new content (the page, and each refresh htmx swaps in) with uPlot.
// A chart is an element with data-series: {"time": [...], "sent": [...], ...} (JSON).
(function () {
  const colors = { sent: "#2e7d32", retried: "#f9a825", failed: "#c62828" };
  function draw(element) {
    const series = JSON.parse(element.dataset.series);
    const names = ["sent", "retried", "failed"];
    const perSecond = (values) => values.map((v) => v / series.bucket_seconds);
    const options = {
      width: element.clientWidth || 600,
      height: 180,
      series: [{}].concat(names.map((name) => ({ label: name + "/s", stroke: colors[name], width: 2 }))),
      axes: [{}, { size: 60 }],
    };
    element.replaceChildren();
    new uPlot(options, [series.time].concat(names.map((n) => perSecond(series[n]))), element);
  }
  htmx.onLoad(function (root) {
    root.querySelectorAll("[data-series]").forEach(draw);
  });
})();
