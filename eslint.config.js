// @ts-check
import js from "@eslint/js"
import effect from "@effect/eslint-plugin"
import tseslint from "typescript-eslint"

/**
 * The layers import one way: `rpc` (contracts) ← `infra` ← `actors` ← `src` (wiring, CLI, config);
 * the web UI imports `rpc` only. Tests and benchmarks may import anything.
 */
const layers = [
  { files: ["rpc/**/*.ts"], above: ["infra", "actors", "src"] },
  { files: ["infra/**/*.ts"], above: ["actors", "src"] },
  { files: ["actors/**/*.ts"], above: ["src"] },
  { files: ["web/**/*.ts"], above: ["infra", "actors", "src/server", "src/cli", "src/config"] }
].map(({ files, above }) => ({
  files,
  rules: {
    "no-restricted-imports": [
      "error",
      {
        patterns: above.map((layer) => ({
          group: [`../**/${layer}/**`, `./**/${layer}/**`],
          message: `${files[0]?.split("/")[0]} may not import ${layer}/: layers import one way (rpc <- infra <- actors <- src; web imports rpc only)`
        }))
      }
    ]
  }
}))

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "web/dist/**", "bench/results/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ["**/*.ts"],
    plugins: { "@effect": effect },
    rules: {
      "@effect/no-import-from-barrel-package": [
        "error",
        {
          packageNames: [
            "@effect/platform",
            "@effect/platform-node",
            "@effect/rpc",
            "@effect/sql",
            "@effect/cluster"
          ]
        }
      ],
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-non-null-assertion": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "no-console": "off"
    }
  },
  ...layers,
  {
    files: ["**/*.js", "**/*.mjs"],
    languageOptions: { globals: { process: "readonly", console: "readonly" } }
  }
)
