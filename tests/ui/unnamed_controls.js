// Visible controls under `root` without an accessible name (aria-label,
// aria-labelledby, a <label>, their text, or a title).
(root) => {
  const unnamed = [];
  for (const el of root.querySelectorAll("button, input, select, textarea, a[href], [role=switch], [role=tab]")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || el.type === "hidden") continue;
    const name = (el.getAttribute("aria-label") || "").trim()
      || (el.getAttribute("aria-labelledby") || "").split(" ").map((id) => document.getElementById(id)?.textContent || "").join("").trim()
      || (el.labels && [...el.labels].map((l) => l.textContent).join("").trim())
      || (["BUTTON", "A"].includes(el.tagName) ? el.textContent.trim() : "")
      || (el.getAttribute("title") || "").trim();
    if (!name) unnamed.push(el.outerHTML.slice(0, 120));
  }
  return unnamed;
}
