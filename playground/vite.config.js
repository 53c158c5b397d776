import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

// Builds the playground and the dashboard. `npm run dev` proxies the API to a running vman (VMAN_URL, default
// http://127.0.0.1:8080); `npm run build` writes a static, self-contained
// bundle to dist/, after `npm run typecheck` (package.json) has checked the
// dashboard's GraphQL documents against ../schema.graphql (`gql.tada check`)
// and its TypeScript (`tsc`): Vite strips types without checking them.
const target = process.env.VMAN_URL || 'http://127.0.0.1:8080';

export default defineConfig({
  // Relative asset URLs: the same dist/ can be served at / and /playground/.
  base: './',
  esbuild: { jsx: 'automatic' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // Monaco is big; its size is expected, don't warn about it.
    chunkSizeWarningLimit: 5000,
    // No sourcemaps: they would more than double dist/.
    sourcemap: false,
    rollupOptions: {
      // Two pages, one build: the playground (index.html, served at / and
      // /playground/) and the dashboard (dashboard.html, at /dashboard).
      input: {
        playground: fileURLToPath(new URL('index.html', import.meta.url)),
        dashboard: fileURLToPath(new URL('dashboard.html', import.meta.url)),
      },
      onwarn(warning, warn) {
        // React libraries' "use client" / "use no memo" directives are
        // meaningless in a client-only bundle; rollup warns once per file.
        if (warning.code === 'MODULE_LEVEL_DIRECTIVE') return;
        warn(warning);
      },
    },
  },
  // ES-module workers (the default 'iife' cannot code-split).
  worker: { format: 'es' },
  // Dev server only (`npm run build` does not need it): the GraphQL worker
  // imports CommonJS packages that Vite does not pre-bundle for workers by
  // itself; without this, monaco logs "Could not create web worker(s)" and
  // runs the GraphQL language service on the main thread.
  optimizeDeps: {
    include: [
      'monaco-graphql > picomatch-browser',
      'monaco-graphql > graphql-language-service > nullthrows',
      'react/jsx-dev-runtime',
    ],
  },
  server: {
    proxy: {
      '/graphql/ws': { target, ws: true, changeOrigin: true },
      '/graphql': { target, changeOrigin: true },
    },
  },
});
