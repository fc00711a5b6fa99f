/**
 * Syntax highlighting of diff lines: highlight.js core with a few common languages only (the
 * full bundle is ~1 MB; core and these eleven are 67 kB minified, 21 kB gzipped, about 8% of the
 * app), chosen by file extension. Each line is highlighted on its own (a diff shows fragments),
 * and highlight.js escapes what it is given, so its HTML is safe to insert.
 */
import hljs from "highlight.js/lib/core"
import bash from "highlight.js/lib/languages/bash"
import css from "highlight.js/lib/languages/css"
import go from "highlight.js/lib/languages/go"
import javascript from "highlight.js/lib/languages/javascript"
import json from "highlight.js/lib/languages/json"
import markdown from "highlight.js/lib/languages/markdown"
import python from "highlight.js/lib/languages/python"
import rust from "highlight.js/lib/languages/rust"
import typescript from "highlight.js/lib/languages/typescript"
import xml from "highlight.js/lib/languages/xml"
import yaml from "highlight.js/lib/languages/yaml"

hljs.registerLanguage("bash", bash)
hljs.registerLanguage("css", css)
hljs.registerLanguage("go", go)
hljs.registerLanguage("javascript", javascript)
hljs.registerLanguage("json", json)
hljs.registerLanguage("markdown", markdown)
hljs.registerLanguage("python", python)
hljs.registerLanguage("rust", rust)
hljs.registerLanguage("typescript", typescript)
hljs.registerLanguage("xml", xml)
hljs.registerLanguage("yaml", yaml)

const byExtension: Record<string, string> = {
  sh: "bash",
  bash: "bash",
  css: "css",
  go: "go",
  js: "javascript",
  mjs: "javascript",
  cjs: "javascript",
  jsx: "javascript",
  json: "json",
  md: "markdown",
  py: "python",
  rs: "rust",
  ts: "typescript",
  tsx: "typescript",
  mts: "typescript",
  html: "xml",
  svelte: "xml",
  xml: "xml",
  svg: "xml",
  yml: "yaml",
  yaml: "yaml"
}

/** The language of a path, by its extension, when one is bundled. */
export const languageOf = (path: string): string | undefined =>
  byExtension[(path.split(".").pop() ?? "").toLowerCase()]

const escape = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")

/** One line of code as escaped HTML, highlighted when `language` is known. */
export const highlightLine = (line: string, language: string | undefined): string =>
  language === undefined || line.length > 2000
    ? escape(line)
    : hljs.highlight(line, { language, ignoreIllegals: true }).value
