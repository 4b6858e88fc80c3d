// The console's one script: live progress by polling while something runs. The pages work
// without it (reload to see progress).
(function () {
  "use strict";
  var INTERVAL_MS = 1000;
  var FINAL = { done: 1, failed: 1, cancelled: 1 };

  function later(fn) { window.setTimeout(fn, INTERVAL_MS); }

  // The jobs list: swap its rows for the server's fresh ones until nothing runs.
  var rows = document.getElementById("job-rows");
  if (rows && rows.dataset.live === "yes") {
    var poll = function () {
      fetch(rows.dataset.poll, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { return; }
        var live = r.headers.get("X-Live") === "yes";
        return r.text().then(function (html) {
          if (rows.innerHTML !== html) { rows.innerHTML = html; }
          if (live) { later(poll); }
        });
      });
    };
    later(poll);
  }

  // A job page: update its state and progress; reload once when it ends, for the players.
  var status = document.getElementById("job-status");
  if (status && status.dataset.live === "yes") {
    var job = status.dataset.job;
    var check = function () {
      fetch("/v1/jobs/" + encodeURIComponent(job), { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { return; }
        return r.json().then(function (d) {
          var j = d.job;
          var shown = j.interrupted ? "interrupted" : j.state;
          status.querySelector('[data-field="state"]').textContent = shown;
          status.querySelector('[data-field="progress"]').value = j.scripts_done;
          status.querySelector('[data-field="done"]').textContent = j.scripts_done;
          status.querySelector('[data-field="billed"]').textContent = j.billed_chars.toLocaleString("en");
          d.scripts.forEach(function (s) {
            var box = document.querySelector('[data-script="' + CSS.escape(s.id) + '"] [data-field="state"]');
            if (box) { box.textContent = s.state; }
          });
          var settled = FINAL[j.state] && (j.options.publish !== "auto" || j.published || j.error);
          if (settled || j.interrupted) { window.location.reload(); } else { later(check); }
        });
      });
    };
    later(check);
  }
})();
