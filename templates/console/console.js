// comfygate console: refreshes the section marked data-live from its JSON endpoint every 2 s.
// The section is rendered (and escaped) by the gateway; without this script the page is whole.
(function () {
  "use strict";
  var box = document.querySelector("[data-live]");
  var status = document.getElementById("live-status");
  if (!box || !window.fetch) return;
  function say(text) { if (status) status.textContent = text; }
  var timer = null;
  function tick() {
    if (document.hidden) return;
    var active = document.activeElement;
    // Never swap the section under a control the admin is using.
    if (active && active !== document.body && box.contains(active)) return;
    fetch(box.getAttribute("data-live"), { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401 || r.status === 403) {
          say("signed out: reload the page");
          clearInterval(timer);
          return null;
        }
        if (!r.ok) throw new Error(String(r.status));
        return r.json();
      })
      .then(function (data) {
        if (!data || typeof data.html !== "string") return;
        box.innerHTML = data.html;
        say("live · " + data.at);
      })
      .catch(function () { say("offline: retrying"); });
  }
  say("live");
  timer = setInterval(tick, 2000);
})();
