// MathJax 3 configuration for the book. The script itself is served from the site
// (assets/vendor/mathjax/, put there by hooks/vendor_assets.py), never from a CDN.
window.MathJax = {
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
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
