// Draws the page's plots with plotly.js and wires the jump box and the search page.
// Plot data sits in <script type="application/json" class="plot-data"> next to each plot's div;
// a point whose customdata is a relative page address opens that page when clicked.
(function () {
  document.querySelectorAll("script.plot-data").forEach(function (el) {
    var spec = JSON.parse(el.textContent);
    var div = document.getElementById(el.dataset.target);
    Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false, responsive: true}).then(function () {
      div.on("plotly_click", function (ev) {
        var url = ev.points[0].customdata;
        if (typeof url === "string") { window.location.href = rootOf() + url; }
      });
    });
  });

  var jump = document.getElementById("jump");
  if (jump) {
    jump.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var n = parseInt(jump.elements.n.value, 10);
      var allowed = jump.dataset.allowed ? JSON.parse(jump.dataset.allowed) : null;
      var error = jump.querySelector(".jump-error");
      if (isNaN(n) || n < 0 || n >= parseInt(jump.dataset.dSae, 10)) {
        error.textContent = "no such feature";
      } else if (allowed && allowed.indexOf(n) < 0) {
        error.textContent = "feature " + n + " is not in this export";
      } else {
        window.location.href = n + ".html";
      }
    });
  }

  function rootOf() {
    var css = document.querySelector("link[rel=stylesheet]").getAttribute("href");
    return css.slice(0, css.length - "static/browse.css".length);
  }
})();

function saekitSearch(root) {
  var index = window.SAEKIT_SEARCH, results = document.getElementById("results");
  var q = new URLSearchParams(window.location.search).get("q") || "";
  document.getElementById("q").value = q;
  q = q.trim();
  if (!q) { return; }
  var found = [];
  var link = function (href, text) {
    var a = document.createElement("a"); a.href = href; a.textContent = text; return a;
  };
  if (/^\d+$/.test(q)) {
    var n = parseInt(q, 10);
    index.saes.forEach(function (s) {
      var have = index.features[s.slug].some(function (f) { return f[0] === n; });
      found.push(have ? link(root + "feature/" + s.slug + "/" + n + ".html", "feature " + n + " of " + s.sae_id)
                      : document.createTextNode("feature " + n + (n < s.d_sae && index.static
                        ? " is not in this export" : " is not in " + s.sae_id)));
    });
  }
  var low = q.toLowerCase();
  index.emotions.forEach(function (e) {
    if (e.toLowerCase().indexOf(low) >= 0) { found.push(link(root + "emotion/" + encodeURIComponent(e) + ".html", "emotion " + e)); }
  });
  index.saes.forEach(function (s) {
    var hits = [];
    index.features[s.slug].forEach(function (f) {
      var rank = f[1].findIndex(function (t) { return t.toLowerCase() === low; });
      if (rank >= 0) { hits.push([rank, f[0]]); }
    });
    hits.sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; });
    hits.slice(0, 200).forEach(function (h) {
      found.push(link(root + "feature/" + s.slug + "/" + h[1] + ".html",
                      "feature " + h[1] + " promotes \u201c" + q + "\u201d (its #" + (h[0] + 1) + " token)"));
    });
  });
  if (!found.length) { found.push(document.createTextNode("nothing matches \u201c" + q + "\u201d")); }
  var ul = document.createElement("ul");
  found.forEach(function (node) { var li = document.createElement("li"); li.appendChild(node); ul.appendChild(li); });
  results.appendChild(ul);
}
