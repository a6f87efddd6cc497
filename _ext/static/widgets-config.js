// Loaded after require.js and before embed-amd.js on pages with saved ipywidgets
// (see nb_ipywidgets_js in _config.yml; copied next to the bundle by _ext/offline_assets.py).
(function () {
  "use strict";
  // The folder of this file, which also holds embed-amd.js and the icon fonts of its CSS.
  var here = document.currentScript.src.replace(/[^/]*$/, "");

  // The bundle's webpack code finds its fonts relative to each AMD module's URL, which
  // RequireJS derives from the module id. Map every module the bundle defines into this
  // folder, so that fonts load from this site and not from the page's folder or a CDN.
  var modules = [
    "@jupyter-widgets/base",
    "@jupyter-widgets/base7",
    "@jupyter-widgets/controls",
    "@jupyter-widgets/controls7",
    "@jupyter-widgets/html-manager",
    "@jupyter-widgets/html-manager/dist/libembed-amd",
  ];
  var paths = {};
  modules.forEach(function (id) {
    paths[id] = here + id.split("/").pop();
  });
  window.requirejs.config({ paths: paths });
  window.__jupyter_widgets_assets_path__ = here;

  // ipywidgets 8 typesets widget labels with the MathJax 2 call MathJax.Hub.Queue(...), which
  // MathJax 3 (served by this site) lacks: without this bridge every labelled widget throws.
  // The bridge runs each queued "Typeset" job with MathJax 3's typesetPromise. It is installed
  // on "load", after the deferred MathJax script has run and before the widgets render.
  function typeset(element) {
    var mj = window.MathJax;
    var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
    ready
      .then(function () {
        return mj.typesetPromise ? mj.typesetPromise([element]) : undefined;
      })
      .catch(function (err) {
        console.warn("MathJax could not typeset a widget label:", err);
      });
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (mj && mj.version && mj.version.charAt(0) !== "2" && !mj.Hub) {
      mj.Hub = {
        Queue: function () {
          Array.prototype.forEach.call(arguments, function (job) {
            if (Array.isArray(job) && job[0] === "Typeset" && job[2]) {
              typeset(job[2]);
            }
          });
        },
      };
    }
  });
})();
