import { defineConfig } from "vitest/config"

/** The soak and load tests (`*.long.test.ts`): `npm run test:long`. */
export default defineConfig({
  test: {
    include: ["test/**/*.long.test.ts"],
    globalSetup: ["test/support/SharedPostgres.ts", "test/support/CliBundle.ts"],
    testTimeout: 300_000,
    hookTimeout: 120_000,
    pool: "forks"
  }
})
