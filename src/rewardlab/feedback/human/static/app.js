// Keyboard shortcuts for the labeling form: 1 / ArrowLeft, 2 / ArrowRight, t, c, s.
// In the reason box the plain keys type text; Alt+key still answers (Ctrl+key is left to the browser).
(function () {
  "use strict";
  var form = document.getElementById("label-form");
  if (!form) { return; }
  var keys = { "1": "choose-a", "ArrowLeft": "choose-a", "2": "choose-b", "ArrowRight": "choose-b",
               "t": "choose-tie", "c": "choose-cant", "s": "choose-skip" };
  var sent = false;
  form.addEventListener("submit", function (e) {
    if (sent) { e.preventDefault(); return; }  // one answer per page: no double submission
    sent = true;
  });
  document.addEventListener("keydown", function (e) {
    var typing = e.target && e.target.tagName === "TEXTAREA";
    if (typing && !e.altKey) { return; }
    if (!typing && (e.ctrlKey || e.altKey || e.metaKey)) { return; }
    var id = keys[e.key];
    if (!id) { return; }
    e.preventDefault();
    document.getElementById(id).click();
  });
})();
