// One key per decision: each button or link that has data-key="<key>" is pressed by that
// key (Enter, 2, 3, s, u, z), unless the reviewer is typing in a field or holds a modifier.
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.key === "Escape") {
    document.querySelector(".photo.zoomed")?.classList.remove("zoomed");
    return;
  }
  if (event.target.closest("input, select, textarea, button, a")) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const target = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (target === null) return;
  event.preventDefault();
  target.click();
});

// The photo enlarges to fill the window on a click (or Z, which clicks it), and back.
document.querySelector(".photo img")?.addEventListener("click", (event) => {
  event.target.closest(".photo").classList.toggle("zoomed");
});
