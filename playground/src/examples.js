// Splits src/examples.graphql into one example per top-level operation.
// An example's text is the operation itself plus the comment lines directly
// above it (no blank line in between); those comments also become its
// description in the "Examples" panel.
import { parse } from 'graphql';
import source from './examples.graphql?raw';

function leadingComments(text, start) {
  const before = text.slice(0, start).split('\n');
  before.pop(); // the (empty) start of the operation's own line
  const lines = [];
  for (let i = before.length - 1; i >= 0; i--) {
    const line = before[i].trim();
    if (!line.startsWith('#')) break;
    lines.unshift(before[i]);
  }
  return lines;
}

export function parseExamples(text) {
  const doc = parse(text);
  return doc.definitions.map((def, index) => {
    const comments = leadingComments(text, def.loc.start);
    const body = text.slice(def.loc.start, def.loc.end);
    return {
      index,
      name: def.name ? def.name.value : `Example${index + 1}`,
      kind: def.kind === 'OperationDefinition' ? def.operation : 'fragment',
      // (Without the step's number: the panel numbers its list.)
      description: comments.map((l) => l.replace(/^\s*#\s?/, '').trim()).join(' ').replace(/^\d+\.\s+/, ''),
      query: [...comments, body].join('\n') + '\n',
    };
  });
}

export const examples = parseExamples(source);
