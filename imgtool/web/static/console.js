// Live console tail of a VM page: every two seconds, fetch /api/vms/NAME/console (same origin, the
// cookie goes along) and show its lines, its state and a streamed VM's hydration as text. No data is
// ever parsed as HTML.
"use strict";
(function () {
  var pre = document.getElementById("console");
  var state = document.getElementById("vm-state");
  var hydration = document.getElementById("vm-hydration");
  var bar = document.getElementById("vm-hydration-bar");
  // The same words as the hydration macro in templates/macros.html.
  function hydrationText(h) {
    var text = h.state;
    if (h.bytes_total) { text += ", " + Math.floor((h.bytes_local || 0) * 100 / h.bytes_total) + "% local"; }
    if (h.eta_seconds) { text += ", about " + h.eta_seconds + " s left"; }
    if (h.state === "paused-waiting-for-remote") { text += " (waiting for " + h.remote + ": imgtool vm resume)"; }
    return text;
  }
  if (!pre || !pre.dataset.source) { return; }
  var source = pre.dataset.source;
  var failures = 0;
  function atBottom() { return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24; }
  function poll() {
    if (document.hidden) { return; }
    fetch(source, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
      .then(function (body) {
        var follow = atBottom();
        var text = body.lines.join("\n");
        if (pre.textContent !== text) { pre.textContent = text; }
        if (follow) { pre.scrollTop = pre.scrollHeight; }
        if (state && state.textContent !== body.state) {
          state.textContent = body.state;
          state.className = "state state-" + body.state.replace(/[^a-z-]/g, "");
        }
        if (hydration && body.hydration) {
          var words = hydrationText(body.hydration);
          if (hydration.textContent !== words) { hydration.textContent = words; }
          if (bar && body.hydration.bytes_total) {
            bar.max = body.hydration.bytes_total;
            bar.value = body.hydration.bytes_local || 0;
          }
        }
        failures = 0;
      })
      .catch(function () { failures += 1; });
  }
  pre.scrollTop = pre.scrollHeight;
  var timer = setInterval(function () { if (failures < 30) { poll(); } else { clearInterval(timer); } }, 2000);
})();
