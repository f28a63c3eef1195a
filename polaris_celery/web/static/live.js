// Live updates of an instance page while a run is in flight: the server sends the page's live
// fragment as an `update` event whenever the instance changes, then `end` once it settled.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.events || !window.EventSource) { return; }
  var source = new EventSource(live.dataset.events);
  source.addEventListener("update", function (e) {
    live.innerHTML = e.data;
    live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
  });
  source.addEventListener("end", function () {
    source.close();
    live.dataset.ended = "1";
  });
})();
