%% fabric_bench: the Erlang/OTP side of fabric's benchmarks, run in the same session.
%%
%% Theory of operation
%% -------------------
%% bench/_erlang.py compiles this module with erlc, starts a private epmd and the peer
%% nodes (plain `erl -noshell`, each an OS process on 127.0.0.1), then starts the driver
%% node with `-run fabric_bench main Kind Arg... Peer...`. The driver connects to every
%% peer (bounded), runs one experiment, prints one result line
%%     @@erl Kind key=value key=value ...
%% on stdout and halts; the Python side parses that line and ends every node by pid.
%% Each experiment is the one fabric's bench script runs (same counts, same interval
%% timed, same topology), so the two figures can be divided:
%%   oneway    N Peer         driver receives, Peer sends {msg, Pid, 42, <<"hello">>};
%%                            N / (receiver's last receipt - sender's first send)
%%   call      N W Peer       gen_server:call to {bench_echo, Peer} from the driver: W
%%                            untimed, N timed (p50, p99, calls/s), and the same for a
%%                            plain echo process ({I, Pid} in, {I} back)
%%   broadcast N P1 P2 P3     10 pg members on each peer, the driver (no members) sends N
%%                            messages to every member of the group; deliveries/s from
%%                            the first send to the last member's last receipt
%%   global    N W P1 P2      each node registers W names concurrently (warm-up), then
%%                            the driver registers N names one at a time (p50, p99, rate)
%%   nodedown  Peer           prints "@@erl ready", then the wall-clock time at which
%%                            {nodedown, Peer} arrives (the harness kill -9s Peer)
%%   mesh      N              launched together with N-1 peers (`-run fabric_bench
%%                            mesh_member Driver N`, each given the driver as its only
%%                            seed): the wall-clock time at which the last of the N nodes
%%                            saw all N-1 others (Erlang's global connects them all)
%% Times compared across OS processes come from os:system_time (CLOCK_REALTIME, one clock
%% for the machine); latencies within one process from erlang:monotonic_time.
-module(fabric_bench).
-behaviour(gen_server).

-export([main/1]).
-export([oneway_tx/2, echo_loop/0, member/2, warm_names/2, start_echo_server/0,
         mesh_member/1]).
-export([init/1, handle_call/3, handle_cast/2]).

-define(CONNECT_MS, 20000).
-define(STEP_MS, 30000).

main([Kind | Args]) ->
    try run(Kind, Args) of
        Pairs -> print_result(Kind, Pairs), halt(0)
    catch Class:Reason:Stack ->
        io:format("@@erl_error ~p:~p ~p~n", [Class, Reason, Stack]),
        halt(2)
    end.

print_result(Kind, Pairs) ->
    Fields = [io_lib:format(" ~s=~s", [K, fmt(V)]) || {K, V} <- Pairs],
    io:format("@@erl ~s~s~n", [Kind, Fields]).

fmt(V) when is_integer(V) -> integer_to_list(V);
fmt(V) when is_float(V) -> float_to_list(V, [{decimals, 3}]).

int(S) -> list_to_integer(S).
node_atoms(Names) -> [list_to_atom(N) || N <- Names].

%% --------------------------------------------------------------------- connecting

connect(Peers) ->
    Deadline = erlang:monotonic_time(millisecond) + ?CONNECT_MS,
    [connect(P, Deadline) || P <- Peers],
    ok.

connect(Peer, Deadline) ->
    case net_adm:ping(Peer) of
        pong -> ok;
        pang ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({cannot_connect, Peer});
                false -> timer:sleep(20), connect(Peer, Deadline)
            end
    end.

%% Peers load this module from the code path on first use; make that happen before any
%% clock starts.
preload(Peers) ->
    [{module, ?MODULE} = rpc:call(P, code, ensure_loaded, [?MODULE]) || P <- Peers],
    ok.

%% --------------------------------------------------------------------- experiments

run("oneway", [N, Peer]) ->
    Count = int(N),
    [P] = node_atoms([Peer]),
    connect([P]), preload([P]),
    spawn(P, ?MODULE, oneway_tx, [self(), Count]),
    receive {ready, Tx} -> Tx ! go after ?STEP_MS -> error(sender_not_ready) end,
    oneway_rx(Count),
    TLast = os:system_time(nanosecond),
    TStart = receive {t_start, T} -> T after ?STEP_MS -> error(no_t_start) end,
    [{"msg_s", Count / ((TLast - TStart) / 1.0e9)}];

run("call", [N, W, Peer]) ->
    Count = int(N),
    Warm = int(W),
    [P] = node_atoms([Peer]),
    connect([P]), preload([P]),
    {ok, _} = rpc:call(P, ?MODULE, start_echo_server, []),
    Server = {bench_echo, P},
    Echo = spawn(P, ?MODULE, echo_loop, []),
    Call = fun(I) -> {ping, I} = gen_server:call(Server, {ping, I}, ?STEP_MS) end,
    Ping = fun(I) ->
                   Echo ! {I, self()},
                   receive {I} -> ok after ?STEP_MS -> error(echo_timeout) end
           end,
    repeat(Call, Warm),
    repeat(Ping, Warm),
    Gen = timed(Call, Count),
    Raw = timed(Ping, Count),
    Echo ! stop,
    figures("", Gen) ++ figures("echo_", Raw);

run("broadcast", [N | Peers]) ->
    Count = int(N),
    Nodes = node_atoms(Peers),
    connect(Nodes), preload(Nodes),
    PerNode = 10,
    Members = [spawn(P, ?MODULE, member, [self(), Count])
               || P <- Nodes, _ <- lists:seq(1, PerNode)],
    Total = length(Members),
    [receive {joined, M} -> ok after ?STEP_MS -> error(member_not_joined) end
     || M <- Members],
    wait_members(Total, erlang:monotonic_time(millisecond) + ?STEP_MS),
    Msg = {msg, self(), 42, <<"hello">>},
    TStart = os:system_time(nanosecond),
    broadcast(Msg, Count),
    TSent = os:system_time(nanosecond),
    Lasts = [receive {done, M, T} -> T after ?STEP_MS -> error(member_timeout) end
             || M <- Members],
    Deliveries = Count * Total,
    [{"deliveries_s", Deliveries / ((lists:max(Lasts) - TStart) / 1.0e9)},
     {"send_s", Count / ((TSent - TStart) / 1.0e9)}];

run("global", [N, W | Peers]) ->
    Count = int(N),
    Warm = int(W),
    Nodes = node_atoms(Peers),
    connect(Nodes), preload(Nodes),
    ok = global:sync(),
    Self = self(),
    Warmers = [spawn(Node, ?MODULE, warm_names, [Self, Warm]) || Node <- [node() | Nodes]],
    [receive {warm, Pid} -> ok after ?STEP_MS -> error(warmup_timeout) end
     || Pid <- Warmers],
    %% global takes one name per pid: a holder process per name, spawned before the clock.
    Holders = list_to_tuple([spawn(fun holder/0) || _ <- lists:seq(1, Count)]),
    Register = fun(I) -> yes = global:register_name({seq, I}, element(I, Holders)) end,
    figures("", timed(Register, Count));

run("mesh", [N]) ->
    Others = int(N) - 1,
    register(mesh_driver, self()),
    Deadline = erlang:monotonic_time(millisecond) + 4 * ?STEP_MS,
    wait_nodes(Others, Deadline),
    Mine = os:system_time(nanosecond),
    Theirs = [receive {full, _, T} -> T after 4 * ?STEP_MS -> error(mesh_incomplete) end
              || _ <- lists:seq(1, Others)],
    [{"t_full_ns", lists:max([Mine | Theirs])}];

run("nodedown", [Peer]) ->
    [P] = node_atoms([Peer]),
    connect([P]),
    ok = net_kernel:monitor_nodes(true),
    io:format("@@erl_ready~n"),
    receive
        {nodedown, P} -> [{"t_down_ns", os:system_time(nanosecond)}]
    after ?STEP_MS -> error(no_nodedown)
    end.

%% --------------------------------------------------------------------- helpers

repeat(_, 0) -> ok;
repeat(F, I) -> F(I), repeat(F, I - 1).

timed(F, Count) ->
    T0 = erlang:monotonic_time(nanosecond),
    Samples = timed(F, Count, []),
    Elapsed = (erlang:monotonic_time(nanosecond) - T0) / 1.0e9,
    {lists:sort(Samples), Elapsed}.

timed(_, 0, Acc) -> Acc;
timed(F, I, Acc) ->
    Start = erlang:monotonic_time(nanosecond),
    F(I),
    timed(F, I - 1, [erlang:monotonic_time(nanosecond) - Start | Acc]).

%% Nearest-rank percentiles, as bench/_harness.py's percentile().
figures(Prefix, {Sorted, Elapsed}) ->
    Len = length(Sorted),
    Rank = fun(Q) -> max(1, ceil_div(Len * Q, 100)) end,
    [{Prefix ++ "p50_us", lists:nth(Rank(50), Sorted) / 1000},
     {Prefix ++ "p99_us", lists:nth(Rank(99), Sorted) / 1000},
     {Prefix ++ "calls_per_s", Len / Elapsed}].

ceil_div(A, B) -> (A + B - 1) div B.

wait_members(Total, Deadline) ->
    case length(pg:get_members(bench)) >= Total of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error(pg_members_missing);
                false -> timer:sleep(5), wait_members(Total, Deadline)
            end
    end.

broadcast(_, 0) -> ok;
broadcast(Msg, I) ->
    %% As pg users do: look the members up and send to each (no fan-out in pg itself).
    [Pid ! Msg || Pid <- pg:get_members(bench)],
    broadcast(Msg, I - 1).

wait_nodes(Count, Deadline) ->
    case length(nodes()) >= Count of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({mesh_incomplete, length(nodes()), Count});
                false -> timer:sleep(2), wait_nodes(Count, Deadline)
            end
    end.

%% --------------------------------------------------------------------- remote ends

%% A mesh peer, started by `-run`: connect to the driver (retrying until it is up), wait
%% for every other node, report when. Spawned, so that init goes on.
mesh_member([Driver, N]) ->
    D = list_to_atom(Driver),
    Others = int(N) - 1,
    spawn(fun() ->
                  Deadline = erlang:monotonic_time(millisecond) + 4 * ?STEP_MS,
                  connect(D, Deadline),
                  wait_nodes(Others, Deadline),
                  T = os:system_time(nanosecond),
                  driver_pid(D, Deadline) ! {full, node(), T}
          end).

%% The driver registers itself when its -run starts, which may be after we connected.
driver_pid(D, Deadline) ->
    case rpc:call(D, erlang, whereis, [mesh_driver]) of
        Pid when is_pid(Pid) -> Pid;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> exit(no_mesh_driver);
                false -> timer:sleep(5), driver_pid(D, Deadline)
            end
    end.

oneway_tx(Rx, Count) ->
    Rx ! {ready, self()},
    receive go -> ok after ?STEP_MS -> exit(no_go) end,
    TStart = os:system_time(nanosecond),
    oneway_send(Rx, {msg, self(), 42, <<"hello">>}, Count),
    Rx ! {t_start, TStart}.

oneway_send(_, _, 0) -> ok;
oneway_send(Rx, Msg, I) -> Rx ! Msg, oneway_send(Rx, Msg, I - 1).

oneway_rx(0) -> ok;
oneway_rx(I) ->
    receive {msg, _, 42, _} -> oneway_rx(I - 1)
    after ?STEP_MS -> error({oneway_missing, I})
    end.

echo_loop() ->
    receive
        {I, From} -> From ! {I}, echo_loop();
        stop -> ok
    after 4 * ?STEP_MS -> ok
    end.

member(Driver, Count) ->
    ok = pg:join(bench, self()),
    Driver ! {joined, self()},
    member_count(Count),
    Driver ! {done, self(), os:system_time(nanosecond)}.

member_count(0) -> ok;
member_count(I) ->
    receive {msg, _, _, _} -> member_count(I - 1)
    after ?STEP_MS -> exit({member_missing, I})
    end.

warm_names(Driver, Count) ->
    [yes = global:register_name({warm, node(), I}, spawn(fun holder/0))
     || I <- lists:seq(1, Count)],
    Driver ! {warm, self()}.

%% Holds a global name (names die with their process) until the node ends.
holder() ->
    receive stop -> ok after 4 * ?STEP_MS -> ok end.

start_echo_server() ->
    gen_server:start({local, bench_echo}, ?MODULE, [], []).

%% --------------------------------------------------------------------- gen_server

init([]) -> {ok, nostate}.
handle_call(Request, _From, State) -> {reply, Request, State}.
handle_cast(_, State) -> {noreply, State}.
