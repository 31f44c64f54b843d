// The reviewer's comparison view: both aligned faces large, zoom and pan kept in step, the five
// landmarks drawn over both, an overlay (opacity and flicker) and a wipe between the two.
// The two crops come from the server already aligned on the same five points at the same scale,
// so one transform applied to both keeps corresponding features under each other. Transforms
// are set through the CSSOM (allowed by the page's CSP, which forbids inline style attributes).
"use strict";
(() => {
  const root = document.getElementById("cmp");
  if (!root) return;
  const size = Number(root.dataset.size) || 512;
  const stages = Array.from(root.querySelectorAll(".cmp-stage"));
  const candidatePane = root.querySelector('[data-pane="candidate"]');
  const zoomOut = document.getElementById("zoom-level");
  const landmarks = document.getElementById("show-landmarks");
  const blend = document.getElementById("blend");
  const wipe = document.getElementById("wipe");
  const flicker = document.getElementById("flicker");
  const state = { zoom: 1, x: 0, y: 0, mode: "side", flicker: null, marks: null };
  const MIN_ZOOM = 1, MAX_ZOOM = 8, PAN_STEP = 24;

  function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

  function apply() {
    // keep the face inside its frame: at zoom z the stage may move (z - 1) * size / 2 each way
    const limit = ((state.zoom - 1) * size) / 2;
    state.x = clamp(state.x, -limit, limit);
    state.y = clamp(state.y, -limit, limit);
    const t = `translate(${state.x}px, ${state.y}px) scale(${state.zoom})`;
    for (const s of stages) s.style.transform = t;
    zoomOut.textContent = `${Math.round(state.zoom * 100)}%`;
    root.dataset.zoom = String(state.zoom);
  }

  function zoomBy(factor) { state.zoom = clamp(state.zoom * factor, MIN_ZOOM, MAX_ZOOM); apply(); }
  function panBy(dx, dy) { state.x += dx; state.y += dy; apply(); }
  function reset() { state.zoom = 1; state.x = 0; state.y = 0; apply(); }

  document.getElementById("zoom-in").addEventListener("click", () => zoomBy(1.25));
  document.getElementById("zoom-out").addEventListener("click", () => zoomBy(0.8));
  document.getElementById("zoom-reset").addEventListener("click", reset);

  // mouse wheel zooms, dragging pans (both panes together)
  for (const view of root.querySelectorAll(".cmp-view")) {
    view.addEventListener("wheel", (e) => { e.preventDefault(); zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15); },
      { passive: false });
    let drag = null;
    view.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY }; view.setPointerCapture(e.pointerId); });
    view.addEventListener("pointermove", (e) => {
      if (!drag) return;
      // the view may be drawn smaller than the crop (narrow windows): pan in crop pixels
      const scale = size / view.getBoundingClientRect().width;
      panBy((e.clientX - drag.x) * scale, (e.clientY - drag.y) * scale);
      drag = { x: e.clientX, y: e.clientY };
    });
    view.addEventListener("pointerup", () => { drag = null; });
    view.addEventListener("pointercancel", () => { drag = null; });
  }

  // keyboard: anywhere on the page but in a form field
  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) && e.target.type !== "checkbox" && e.target.type !== "radio") return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const keys = {
      "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(0.8), "−": () => zoomBy(0.8),
      "0": reset,
      ArrowLeft: () => panBy(PAN_STEP, 0), ArrowRight: () => panBy(-PAN_STEP, 0),
      ArrowUp: () => panBy(0, PAN_STEP), ArrowDown: () => panBy(0, -PAN_STEP),
      l: () => { landmarks.checked = !landmarks.checked; showMarks(); },
      f: () => { if (state.mode === "overlay") toggleFlicker(); },
    };
    const action = keys[e.key] || keys[e.key.toLowerCase()];
    if (!action) return;
    e.preventDefault();
    action();
  });

  // landmarks: fetched once (an audited view like the images), drawn as SVG over both faces
  const SVG = "http://www.w3.org/2000/svg";
  function draw(svg, points, kind) {
    svg.replaceChildren();
    points.forEach(([x, y], i) => {
      const c = document.createElementNS(SVG, "circle");
      c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", String(size / 90));
      c.setAttribute("class", `mark mark-${kind}`);
      c.dataset.point = String(i);
      svg.appendChild(c);
    });
  }
  async function showMarks() {
    root.classList.toggle("marks-on", landmarks.checked);
    if (!landmarks.checked || state.marks) return;
    const r = await fetch(root.dataset.landmarks, { credentials: "same-origin" });
    if (!r.ok) { landmarks.checked = false; root.classList.remove("marks-on"); return; }
    state.marks = await r.json();
    for (const svg of root.querySelectorAll("svg.marks")) {
      // each face shows its own points, and the other's faintly, to see where they differ
      const own = svg.dataset.who === "probe" ? state.marks.probe : state.marks.candidate;
      const other = svg.dataset.who === "probe" ? state.marks.candidate : state.marks.probe;
      draw(svg, own, svg.dataset.who);
      const ghost = document.createElementNS(SVG, "g");
      ghost.setAttribute("class", "ghost");
      other.forEach(([x, y]) => {
        const c = document.createElementNS(SVG, "circle");
        c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", String(size / 140));
        c.setAttribute("class", "mark mark-other");
        ghost.appendChild(c);
      });
      svg.appendChild(ghost);
    }
    root.dataset.marksDrawn = "true";
  }
  landmarks.addEventListener("change", showMarks);

  // modes: side by side; overlay (the candidate pane laid over the probe's, with an opacity
  // slider and flicker); wipe (the candidate pane clipped from the slider's position rightwards)
  function setMode(mode) {
    state.mode = mode;
    root.classList.remove("mode-side", "mode-overlay", "mode-wipe");
    root.classList.add(`mode-${mode}`);
    if (mode !== "overlay" && state.flicker) toggleFlicker();
    candidatePane.style.opacity = mode === "overlay" ? String(blend.value / 100) : "";
    candidatePane.style.clipPath = mode === "wipe" ? `inset(0 0 0 ${wipe.value}%)` : "";
  }
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => { if (radio.checked) setMode(radio.value); });
  }
  blend.addEventListener("input", () => { if (state.mode === "overlay") candidatePane.style.opacity = String(blend.value / 100); });
  wipe.addEventListener("input", () => { if (state.mode === "wipe") candidatePane.style.clipPath = `inset(0 0 0 ${wipe.value}%)`; });

  function toggleFlicker() {
    if (state.flicker) {
      clearInterval(state.flicker);
      state.flicker = null;
      candidatePane.style.visibility = "";
      flicker.setAttribute("aria-pressed", "false");
      return;
    }
    let shown = true;
    // about 2 Hz: slow enough to compare, fast enough for differences to "jump"
    state.flicker = setInterval(() => { shown = !shown; candidatePane.style.visibility = shown ? "" : "hidden"; }, 500);
    flicker.setAttribute("aria-pressed", "true");
  }
  flicker.addEventListener("click", () => { if (state.mode !== "overlay") { document.getElementById("mode-overlay").checked = true; setMode("overlay"); } toggleFlicker(); });

  apply();
})();
