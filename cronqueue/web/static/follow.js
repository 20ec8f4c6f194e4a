// Follows a running task on its page: polls live.json (same origin) every 2 s and writes what
// it returns as text (textContent: nothing from the task is ever parsed as HTML). When the task
// has finished, the page is loaded once more to show everything. No inline script: the CSP
// allows only this file.
(function () {
  "use strict";
  var box = document.getElementById("follow");
  if (!box) { return; }
  var url = box.getAttribute("data-url");
  function set(id, text) {
    var el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (t) {
        if (!t) { setTimeout(poll, 5000); return; }
        set("live-status", String(t.status));
        set("live-attempts", String(t.attempts));
        if (t.output) { set("live-output", String(t.output)); }
        if (t.finished) { window.location.reload(); return; }
        setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
}());
