// tinyscheduler dashboard: live updates by short polling. No inline script anywhere:
// the server renders escaped HTML fragments, and log text is only ever added as text.
(function () {
  "use strict";
  var POLL_MS = 1000;
  var status = document.getElementById("live-status");

  function setStatus(ok) {
    if (!status) { return; }
    status.textContent = ok ? "live" : "reconnecting";
    status.className = ok ? "live" : "live down";
  }

  function fetchOk(url, accept) {
    return fetch(url, { credentials: "same-origin", cache: "no-store",
                        headers: { "Accept": accept } })
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/login"); }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response;
      });
  }

  // The page's live region: replaced by the same server-rendered fragment every second.
  var live = document.getElementById("live");
  if (live && live.dataset.src) {
    var refresh = function () {
      fetchOk(live.dataset.src, "text/html")
        .then(function (response) { return response.text(); })
        .then(function (html) {
          // Keep an action note (?note=) out of later refreshes: it is shown once.
          live.innerHTML = html;
          setStatus(true);
        })
        .catch(function () { setStatus(false); })
        .then(function () { window.setTimeout(refresh, POLL_MS); });
    };
    window.setTimeout(refresh, POLL_MS);
  }

  // A task's log: appended as text while the attempt runs.
  var log = document.getElementById("log");
  var logState = document.getElementById("log-state");
  if (log && log.dataset.src) {
    var offset = parseInt(log.dataset.offset, 10) || 0;
    var attempt = log.dataset.attempt;
    var follow = function () {
      var url = log.dataset.src + "?attempt=" + encodeURIComponent(attempt) +
                "&offset=" + offset;
      fetchOk(url, "application/json")
        .then(function (response) { return response.json(); })
        .then(function (chunk) {
          var atBottom = window.innerHeight + window.scrollY >=
                         document.body.scrollHeight - 40;
          if (chunk.reset) { log.textContent = ""; }
          if (chunk.text) { log.appendChild(document.createTextNode(chunk.text)); }
          offset = chunk.offset;
          if (logState) { logState.textContent = chunk.running ? "following" : "ended"; }
          if (chunk.text && atBottom) { window.scrollTo(0, document.body.scrollHeight); }
          setStatus(true);
          // Once the attempt has ended and everything is read, stop asking.
          if (chunk.running || chunk.text) { window.setTimeout(follow, POLL_MS); }
        })
        .catch(function () { setStatus(false); window.setTimeout(follow, POLL_MS * 2); });
    };
    window.setTimeout(follow, log.dataset.running === "true" ? POLL_MS : 0);
  }
})();
