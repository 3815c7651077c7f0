// Inserts a saved reply template into the answer box.
const picker = document.getElementById("reply-template");
const answer = document.getElementById("answer-text");
if (picker && answer) {
  picker.addEventListener("change", () => {
    answer.value = answer.value ? `${answer.value}\n\n${picker.value}` : picker.value;
  });
}
