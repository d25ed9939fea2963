// Refresh the console in place every 5 s while the tab is visible; no external assets.
(function () {
  var busy = false;
  function update() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(location.pathname, { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("console");
        if (fresh) document.getElementById("console").replaceWith(fresh);
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); })
      .finally(function () { busy = false; });
  }
  setInterval(update, 5000);
  document.addEventListener("visibilitychange", update);
})();
