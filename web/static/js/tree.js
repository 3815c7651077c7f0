// Filters the station tree as the user types; the server-side search form
// still works without this script.
const input = document.getElementById("station-search");
const tree = document.getElementById("station-tree");
const noMatch = document.getElementById("tree-no-match");

function matches(node, needle) {
  const name = node.dataset.name || "";
  const code = node.dataset.code || "";
  return name.includes(needle) || code.startsWith(needle);
}

function filter(needle) {
  const nodes = tree.querySelectorAll("li.node");
  if (!needle) {
    nodes.forEach((node) => node.classList.remove("hidden"));
    noMatch.classList.add("hidden");
    return;
  }
  let shown = 0;
  nodes.forEach((node) => node.classList.add("hidden"));
  nodes.forEach((node) => {
    if (!matches(node, needle)) return;
    shown += 1;
    // reveal the match, its ancestors (opened) and its whole subtree
    node.classList.remove("hidden");
    node.querySelectorAll("li.node").forEach((child) => child.classList.remove("hidden"));
    let parent = node.parentElement.closest("li.node");
    while (parent) {
      parent.classList.remove("hidden");
      const details = parent.querySelector(":scope > details");
      if (details) details.open = true;
      parent = parent.parentElement.closest("li.node");
    }
  });
  noMatch.classList.toggle("hidden", shown > 0);
}

if (input && tree) {
  input.addEventListener("input", () => filter(input.value.trim()));
}
