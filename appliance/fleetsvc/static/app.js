// Live refresh of the fleet overview, the jobs and a job: fetch the server-rendered part every
// data-interval ms (5 s unless the page says otherwise) and swap it in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  function refresh() {
    if (document.activeElement && live.contains(document.activeElement) &&
        document.activeElement.tagName !== "A") { return; }  // do not clobber a filter being typed
    fetch(live.dataset.refresh, {credentials: "same-origin"}).then(function (r) {
      if (r.redirected || !r.ok) { return null; }
      return r.text();
    }).then(function (html) { if (html) { live.innerHTML = html; } }).catch(function () {});
  }
  setInterval(refresh, parseInt(live.dataset.interval || "5000", 10));
})();
