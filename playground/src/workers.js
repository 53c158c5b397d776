// Monaco (GraphiQL 5's editor) runs its language services in web workers.
// Vite's `?worker` imports bundle each worker into dist/assets, so nothing is
// fetched from a CDN. This is what `graphiql/setup-workers/vite` does, kept
// in our own source because Vite's dev-mode dependency optimizer cannot
// pre-bundle `?worker` imports that live inside node_modules.
import EditorWorker from 'monaco-editor/esm/vs/editor/editor.worker.js?worker';
import JsonWorker from 'monaco-editor/esm/vs/language/json/json.worker.js?worker';
import GraphQLWorker from 'monaco-graphql/esm/graphql.worker.js?worker';

globalThis.MonacoEnvironment = {
  getWorker(_workerId, label) {
    switch (label) {
      case 'json':
        return new JsonWorker();
      case 'graphql':
        return new GraphQLWorker();
      default:
        return new EditorWorker();
    }
  },
};
