// Consultation pages: the report's print button (no inline script under the CSP).
for (const button of document.querySelectorAll("[data-print]")) {
  button.addEventListener("click", () => window.print());
}
