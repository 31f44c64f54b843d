// retroface pages: small progressive enhancements; every page works without them.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Move focus to the main content after an htmx swap that replaces it, for screen readers.
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (e.detail.target && e.detail.target.id === "main") e.detail.target.focus();
  });
});
