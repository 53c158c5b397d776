// The `graphql` tag of the dashboard's documents (documents.ts): gql.tada
// types each document's result and variables from vman's schema, as
// introspected into graphql-env.d.ts (`npm run typegen` writes it from
// ../../../schema.graphql; `npm run build` does too, before `tsc`).
import { initGraphQLTada } from 'gql.tada';
import type { introspection } from './graphql-env.d.ts';

export const graphql = initGraphQLTada<{
  introspection: introspection;
  // Fragments spread into the result (no readFragment): the dashboard's one
  // fragment is the VM row every query and mutation returns.
  disableMasking: true;
  scalars: {
    ID: string;
    // Results are JSON numbers (an input may also be a decimal string).
    Bytes: number;
    DateTime: string;
    JSON: unknown;
  };
}>();

export type { ResultOf, VariablesOf, TadaDocumentNode } from 'gql.tada';
