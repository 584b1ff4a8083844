// The dashboard's build: one HTML page and hashed files under assets/ (served by the
// control listener from memory, docs/dashboard.md). No public/ directory: the listener
// serves index.html and assets/ only.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  publicDir: false,
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    target: 'es2020',
    sourcemap: false,
    // One small app: a single script and a single style sheet.
    cssCodeSplit: false,
    rollupOptions: { output: { manualChunks: undefined } },
  },
  server: {
    // `npm run dev` against a running croupier control port (CROUPIER_CONTROL, default :8081).
    proxy: Object.fromEntries(
      ['/api', '/metrics'].map((p) => [p, process.env.CROUPIER_CONTROL ?? 'http://127.0.0.1:8081']),
    ),
  },
});
