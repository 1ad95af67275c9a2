// Wharf's only script: the copy buttons. Each ``button.copy`` carries ``data-copy``; the same text is
// on the page, selectable, so nothing needs this script to be read. Buttons start hidden and are shown here.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  if (!navigator.clipboard) { return; }
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    button.hidden = false;
    var label = button.textContent;
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
        button.textContent = "Copied";
        button.setAttribute("aria-live", "polite");
        setTimeout(function () { button.textContent = label; }, 2000);
      }, function () {
        button.textContent = "Copy failed: select the text";
      });
    });
  });
});
