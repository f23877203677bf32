// The steer page: posts the form as JSON to steer/stream and draws the JSON lines as they arrive;
// cancel aborts the request (the server stops generating); save posts the same form to steer/save.
(function () {
  var form = document.getElementById("steer");
  if (!form) { return; }
  var status = document.getElementById("status");
  var runButton = document.getElementById("run");
  var cancelButton = document.getElementById("cancel");
  var controller = null;

  function body() {
    var f = form.elements;
    var out = {prompt: f.prompt.value, kind: f.kind.value, strength: parseFloat(f.strength.value),
               seed: parseInt(f.seed.value, 10), temperature: parseFloat(f.temperature.value),
               max_new_tokens: parseInt(f.max_new_tokens.value, 10), chat: f.chat.checked, control: f.control.checked};
    if (form.dataset.emotion) { out.emotion = form.dataset.emotion; }
    if (form.dataset.feature !== "") { out.feature = parseInt(form.dataset.feature, 10); }
    return out;
  }

  function post(url) {
    return fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body()),
                       signal: controller ? controller.signal : undefined});
  }

  function column(name) { return document.querySelector("#col-" + name + " .text"); }

  function reset(columns) {
    ["clean", "edited", "control"].forEach(function (name) { column(name).textContent = ""; });
    document.getElementById("col-control").hidden = columns.indexOf("control") < 0;
    var table = document.getElementById("kl");
    while (table.rows.length > 1) { table.deleteRow(1); }
  }

  function show(event) {
    if (event.event === "start") {
      reset(event.columns);
      status.textContent = "generating: " + event.setting.target + " at strength " + event.setting.strength + " ...";
    } else if (event.event === "token") {
      var span = document.createElement("span");
      span.className = "tok";
      span.dataset.step = event.step;
      span.textContent = event.text;
      column(event.column).appendChild(span);
      if (event.column === "edited") {
        span.title = "KL " + event.kl;
        var row = document.getElementById("kl").insertRow(-1);
        row.className = "kl-row";
        [String(event.step), JSON.stringify(event.text), event.kl.toFixed(4),
         event.top.map(function (t) { return JSON.stringify(t.token) + " " + (t.change >= 0 ? "+" : "") + t.change.toFixed(2); }).join(", ")
        ].forEach(function (text) { row.insertCell(-1).textContent = text; });
      }
    } else if (event.event === "done") {
      status.textContent = "done: " + event.tokens + " tokens in " + event.seconds + " s";
      status.dataset.ids = JSON.stringify(event.ids);
      status.dataset.done = "1";
    } else if (event.event === "error") {
      status.textContent = "error: " + event.message;
    }
  }

  function finish() {
    runButton.disabled = false;
    cancelButton.disabled = true;
    controller = null;
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    controller = new AbortController();
    runButton.disabled = true;
    cancelButton.disabled = false;
    status.dataset.done = "";
    status.textContent = "starting ...";
    post("steer/stream").then(function (response) {
      if (!response.ok) {
        return response.json().then(function (e) {
          status.textContent = e.error; status.className = "error"; status.dataset.done = "error";
        });
      }
      status.className = "muted";
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) { return; }
          buffer += decoder.decode(chunk.value, {stream: true});
          var lines = buffer.split("\n");
          buffer = lines.pop();
          lines.filter(function (l) { return l.trim(); }).forEach(function (l) { show(JSON.parse(l)); });
          return pump();
        });
      }
      return pump();
    }).catch(function (err) {
      if (err.name === "AbortError") { status.textContent = "cancelled"; } else { status.textContent = "error: " + err; }
    }).then(finish);
  });

  cancelButton.addEventListener("click", function () { if (controller) { controller.abort(); } });

  document.getElementById("save").addEventListener("click", function () {
    var saved = document.getElementById("saved");
    fetch("steer/save", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body())})
      .then(function (r) { return r.json(); })
      .then(function (r) {
        saved.textContent = r.error ? r.error : "saved " + r.path + "; run it with: " + r.command;
        saved.className = r.error ? "error" : "";
        saved.dataset.path = r.path || "";
      });
  });
})();
