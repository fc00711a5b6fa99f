import { defineConfig } from "vitest/config"

/** Files that load both cores by themselves (three nodes and a producer): run alone, at the end. */
const alone = ["test/server/Cluster.test.ts"]

const shared = {
  globalSetup: ["test/support/SharedPostgres.ts", "test/support/CliBundle.ts"],
  testTimeout: 60_000,
  hookTimeout: 120_000
}

export default defineConfig({
  test: {
    pool: "forks",
    // Two files at a time on two cores: most of a file's time is spent waiting on the servers,
    // shells and browsers it starts (vitest's default here would be one).
    maxWorkers: 2,
    minWorkers: 1,
    projects: [
      {
        test: {
          ...shared,
          name: "suite",
          include: ["test/**/*.test.ts"],
          // Soak and load tests run in `npm run test:long` (vitest.long.config.ts), which CI also runs.
          exclude: ["test/**/*.long.test.ts", "**/node_modules/**", ...alone],
          sequence: { groupOrder: 0 }
        }
      },
      {
        test: { ...shared, name: "alone", include: alone, sequence: { groupOrder: 1 } }
      }
    ]
  }
})
