// Live countdown to each deadline on the page: "4:05" while it runs, "0:10 late" once it
// has passed. A file rather than an inline script: the CSP allows scripts from this
// site only.
document.querySelectorAll("[data-deadline]").forEach(function (el) {
  var deadline = new Date(el.dataset.deadline);
  function tick() {
    var left = Math.round((deadline - new Date()) / 1000);
    var abs = Math.abs(left);
    var text = Math.floor(abs / 60) + ":" + String(abs % 60).padStart(2, "0");
    el.textContent = left < 0 ? text + " late" : text;
    el.classList.toggle("late", left < 0);
  }
  tick();
  setInterval(tick, 1000);
});
