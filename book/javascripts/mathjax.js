// MathJax 3 configuration for the book, and its loader. The script itself is served from the site
// (assets/vendor/mathjax/, put there by hooks/vendor_assets.py), never from a CDN, and only once a
// page has math: most pages of the API reference have none, and load in about half the time
// without its 1 MB of JavaScript.
const MATHJAX_SCRIPT = new URL("../assets/vendor/mathjax/tex-mml-chtml.js", document.currentScript.src).href;
let mathJaxReady = null;

function loadMathJax() {
  if (mathJaxReady === null) {
    mathJaxReady = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = MATHJAX_SCRIPT;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`MathJax could not be loaded from ${MATHJAX_SCRIPT}`));
      document.head.appendChild(script);
    }).then(() => MathJax.startup.promise);
  }
  return mathJaxReady;
}

window.MathJax = {
  startup: { typeset: false }, // each page is typeset below, the first one too
  tex: {
    // arithmatex (generic mode) emits \( \) and \[ \]; "$" delimiters only ever reach
    // MathJax inside notebook Markdown cells, because everything else is ignored below.
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    // Typeset only what arithmatex marked and notebook Markdown, so a "$" in prose or code
    // is never mistaken for math.
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|nb-math"
  }
};

// Material's document$ emits on the first load and after every instant navigation,
// when the new page's content has replaced the old one.
document$.subscribe(() => {
  // ignoreHtmlClass ".*|" also matches the class-less <p> inside notebook cells, so mark them.
  document
    .querySelectorAll(".jp-RenderedMarkdown, .jp-RenderedMarkdown *")
    .forEach((el) => el.classList.add("nb-math"));
  if (!document.querySelector(".arithmatex, .nb-math")) return; // no math on this page
  loadMathJax().then(() => {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});
