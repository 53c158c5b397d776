//! The typed GraphQL documents of the client. Each struct is one operation of
//! a `.graphql` file beside this one, checked against `schema.graphql` when
//! vman builds: a schema change that breaks a document breaks the build.

use graphql_client::GraphQLQuery;

// The custom scalars, as the client sees them. `Bytes` and `JSON` stay JSON
// values so `-o json` prints them exactly as the server sent them.
#[allow(clippy::upper_case_acronyms)]
type JSON = serde_json::Value;
type Bytes = serde_json::Value;
type DateTime = String;

macro_rules! documents {
    ($file:tt: $($name:ident),+ $(,)?) => {$(
        #[derive(GraphQLQuery)]
        #[graphql(
            schema_path = "schema.graphql",
            query_path = $file,
            response_derives = "Debug, Serialize",
            variables_derives = "Debug"
        )]
        pub struct $name;
    )+};
}

documents!("src/cli/queries/vm.graphql":
    VmList, VmLookup, VmShow, VmCreate, VmStart, VmStop, VmPause, VmResume, VmDelete, VmClone);
documents!("src/cli/queries/disk.graphql": DiskList, DiskCreate, DiskDelete);
documents!("src/cli/queries/network.graphql": NetworkList, NetworkCreate, NetworkDelete);
documents!("src/cli/queries/events.graphql":
    EventPage, JournalHead, EventFeed, OperationList, OperationShow, OperationFeed);
documents!("src/cli/queries/console.graphql": ConsoleFeed, ConsoleInput);
