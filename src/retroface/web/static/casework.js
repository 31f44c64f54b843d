// Operator pages: progressive enhancements only; each form works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Drag and drop onto the upload's drop zone: the dropped files become the file input's files,
  // and the ordinary form posts them (no upload by script).
  document.querySelectorAll("[data-dropzone-for]").forEach((zone) => {
    const input = document.getElementById(zone.dataset.dropzoneFor);
    if (!input) return;
    const hint = zone.querySelector(".dropzone-hint");
    const list = zone.querySelector(".dropzone-list");
    if (hint) hint.hidden = false;
    const show = () => {
      if (list) list.textContent = Array.from(input.files).map((f) => f.name).join(", ");
    };
    input.addEventListener("change", show);
    ["dragenter", "dragover"].forEach((type) =>
      zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); }));
    ["dragleave", "drop"].forEach((type) =>
      zone.addEventListener(type, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      if (e.dataTransfer && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        show();
      }
    });
  });
});
