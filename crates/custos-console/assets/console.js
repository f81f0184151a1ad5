// The console's one script: nothing needs it to work. It asks before a
// destructive action and gives the print button something to do.
"use strict";
document.addEventListener("submit", (e) => {
  const form = e.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) e.preventDefault();
});
document.addEventListener("click", (e) => {
  if (e.target.closest("[data-print]")) window.print();
});
