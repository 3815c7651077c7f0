// Shows only the date fields of the chosen stage on the enrolment form; without
// this script every field stays visible and the server ignores the unused ones.
const form = document.getElementById("enrol-form");

function showStage() {
  const chosen = form.querySelector("input[name=stage]:checked");
  const stage = chosen ? chosen.value : "";
  form.querySelectorAll("fieldset.stage-fields").forEach((group) => {
    const stages = (group.dataset.stages || "").split(" ");
    group.classList.toggle("hidden", !stages.includes(stage));
  });
}

if (form) {
  form.querySelectorAll("input[name=stage]").forEach((radio) => {
    radio.addEventListener("change", showStage);
  });
  showStage();
}
