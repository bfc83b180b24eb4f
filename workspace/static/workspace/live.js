// The agent pages' live parts, as a file because the CSP allows scripts from this site
// only (no inline scripts, no eval):
// - the heartbeat that keeps presence set from the pages from lapsing to away;
// - the clocks: accept deadlines counting down, customers' waiting time counting up;
// - two guards on htmx's polling of the lists (the polling itself is declared with
//   hx-get/hx-trigger in the templates).
(function () {
  "use strict";

  var body = document.body;
  var csrfMeta = document.querySelector("meta[name=csrf-token]");

  // --- Heartbeat: once on load, then every minute while a page is open.
  var heartbeatUrl = body.dataset.heartbeatUrl;
  if (heartbeatUrl && csrfMeta) {
    var beat = function () {
      fetch(heartbeatUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfMeta.content },
      }).then(function (response) {
        if (response.status === 401) clearInterval(timer); // logged out elsewhere
      }, function () { /* offline for a moment: the next beat tries again */ });
    };
    var timer = setInterval(beat, 60000);
    beat();
  }

  // --- Clocks. Read from the document on every tick, so rows swapped in by a poll
  // tick too without being bound to anything.
  function clock(seconds) {
    var h = Math.floor(seconds / 3600);
    var m = Math.floor((seconds % 3600) / 60);
    var s = String(seconds % 60).padStart(2, "0");
    return h ? h + ":" + String(m).padStart(2, "0") + ":" + s : m + ":" + s;
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-countdown-to]").forEach(function (el) {
      var left = Math.round((new Date(el.dataset.countdownTo) - now) / 1000);
      el.textContent = left < 0 ? clock(-left) + " late" : clock(left);
      el.classList.toggle("late", left < 0);
    });
    document.querySelectorAll("[data-elapsed-since]").forEach(function (el) {
      var since = Math.max(0, Math.round((now - new Date(el.dataset.elapsedSince)) / 1000));
      el.textContent = clock(since);
    });
  }
  tick();
  setInterval(tick, 1000);
  document.addEventListener("htmx:afterSwap", tick);

  // --- Polling guards.
  // The list sends the fingerprint of what it shows; the server answers 204 (no swap)
  // while it is unchanged.
  document.addEventListener("htmx:configRequest", function (event) {
    var version = event.detail.elt.dataset.liveVersion;
    if (version) event.detail.headers["X-Live-Version"] = version;
  });
  // No swap under the agent's fingers: while they are choosing a transfer target (a
  // field of the list has the focus), the list waits for the next poll.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var focused = document.activeElement;
    if (
      focused && focused.matches("select, input, textarea") &&
      event.detail.elt.contains(focused)
    ) {
      event.preventDefault();
    }
  });
})();
