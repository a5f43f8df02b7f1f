// Live refresh of the fleet overview: fetch the server-rendered rows every 5 s and swap them in.
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
  setInterval(refresh, 5000);
})();
