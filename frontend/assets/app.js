// Progressive enhancement only: the upload form works without this file. Adds drag & drop onto
// the upload form and pasting an image from the clipboard; both submit the same plain form.
(function () {
  "use strict";
  var form = document.getElementById("upload");
  if (!form || typeof DataTransfer === "undefined") return;
  var input = form.querySelector("input[type=file]");

  function submitFile(file) {
    if (!file || !/^image\//.test(file.type)) return;
    var transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    form.submit();
  }

  form.addEventListener("dragover", function (e) {
    e.preventDefault();
    form.classList.add("dragging");
  });
  form.addEventListener("dragleave", function () { form.classList.remove("dragging"); });
  form.addEventListener("drop", function (e) {
    e.preventDefault();
    form.classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files.length) submitFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", function (e) {
    var items = (e.clipboardData && e.clipboardData.items) || [];
    for (var i = 0; i < items.length; i++) {
      if (items[i].kind === "file") { submitFile(items[i].getAsFile()); return; }
    }
  });
  // Choosing a file submits at once, like a search box's Enter.
  input.addEventListener("change", function () { if (input.files.length) form.submit(); });
})();
