// Visible strings come from the page, already translated by the server's
// catalog: <div id="room-text" hidden><span data-key="...">...</span></div>.
// Placeholders look like {name} and are filled here.

const cache = new Map();

function load() {
  const holder = document.getElementById("room-text");
  if (!holder) return;
  for (const node of holder.querySelectorAll("[data-key]")) {
    cache.set(node.dataset.key, node.textContent);
  }
}

export function has(key) {
  if (cache.size === 0) load();
  return cache.has(key);
}

export function t(key, values = {}) {
  if (cache.size === 0) load();
  let text = cache.has(key) ? cache.get(key) : key;
  for (const [name, value] of Object.entries(values)) {
    text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}
