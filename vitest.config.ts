import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores: end-to-end files start several processes each.
    maxWorkers: 2,
    reporters: ["default", "./test/fixtures/summary-reporter.ts"],
  },
});
