// The SLA dashboard's list of leads at risk refreshes itself: every few seconds it
// fetches the list again, as an HTML fragment rendered by the server, and swaps it in.
// A file rather than an inline script: the CSP allows scripts from this site only.
(function () {
  var container = document.querySelector("[data-refresh-url]");
  if (!container) {
    return;
  }
  var url = container.dataset.refreshUrl;
  var seconds = parseInt(container.dataset.refreshSeconds, 10) || 15;
  var status = document.querySelector("[data-testid=refresh-status]");
  var busy = false;

  function say(text, failed) {
    if (status) {
      status.textContent = text;
      status.classList.toggle("failed", Boolean(failed));
    }
  }

  function refresh() {
    if (busy) {
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        // A lapsed session is redirected to the login page: that is not the list.
        if (!response.ok || response.redirected) {
          throw new Error(response.redirected ? "log in again" : "HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        container.innerHTML = html;
        say("Refreshes every " + seconds + " s.", false);
      })
      .catch(function (error) {
        say("Could not refresh the list (" + error.message + "); trying again in " + seconds + " s.", true);
      })
      .finally(function () {
        busy = false;
      });
  }

  setInterval(refresh, seconds * 1000);
})();
