/**
 * Builds the web UI into dist/web (served by `vibes serve` at `/`). `npm run dev:web` serves it
 * with hot reload and proxies the API to a running server (VIBES_URL, default :7432).
 */
import { defineConfig } from "vite"
import { svelte } from "@sveltejs/vite-plugin-svelte"
import { fileURLToPath } from "node:url"

const backend = process.env["VIBES_URL"] ?? "http://127.0.0.1:7432"
// The server accepts cookie-carrying requests only from its own origin: the proxy presents them so.
const asBackend = { changeOrigin: true, headers: { origin: new URL(backend).origin } }

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "/",
  plugins: [svelte()],
  build: {
    outDir: fileURLToPath(new URL("../dist/web", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 1500
  },
  server: {
    host: "127.0.0.1",
    proxy: {
      "/rpc": { target: backend, ws: true, ...asBackend },
      "/api": { target: backend, ...asBackend },
      "/login": { target: backend, ...asBackend },
      "/logout": { target: backend, ...asBackend }
    }
  }
})
