//! The interpreter and the embedding API: [`Engine`], [`Execution`], [`Limits`], [`Status`].
//!
//! An [`Execution`] runs one function call (a script's entry, an exported function, a remote
//! body) as a set of cooperative tasks. Each task owns one contiguous value stack and a
//! vector of frames; script calls push frames, they never recurse on the Rust stack. The host
//! drives the execution with [`Execution::run`], which returns whenever the execution is done,
//! failed, blocked (every task waits on a timer, another task or a remote call) or has used a
//! slice of instructions ([`Status::Yielded`]) — control always comes back to the host.
//! A call expected to end at once can skip building the execution: [`Execution::run_quick`]
//! starts and runs it, and builds one only if the call does more than run one task through.
//!
//! ```
//! use skiff_vm::interp::{Engine, Execution, ExecIo, Limits, Status};
//! use skiff_vm::store::CodeStore;
//! use skiff_vm::{Blob, FunctionCode, FunctionId, Instr, Portable};
//! use skiff_vm::native::NodeInfo;
//! use std::sync::Arc;
//!
//! // fn add(a, b) { a + b }
//! let blob = Blob { functions: vec![FunctionCode {
//!     arity: 2, locals: 2,
//!     code: vec![Instr::GetLocal { slot: 0 }, Instr::GetLocal { slot: 1 }, Instr::Add {}, Instr::Return {}],
//!     ..Default::default()
//! }] };
//! let mut store = CodeStore::new();
//! let hash = store.insert(Arc::new(blob), None).unwrap();
//! let func = FunctionId { blob: hash, member: 0 };
//! let engine = Engine::new();
//! let mut exec = Execution::start(&engine, &store, func, vec![Portable::Int(2), Portable::Int(3)],
//!     NodeInfo::default(), Limits::default(), ExecIo::null()).unwrap();
//! match exec.run(std::time::Instant::now()) {
//!     Status::Done(v) => assert_eq!(v, Portable::Int(5)),
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! Invariants:
//! - Only verified code runs: functions come from a [`CodeStore`] through the linker.
//! - Value-stack discipline: in a frame, locals are `stack[base..base+locals]`, the operand
//!   stack is above them, and every slot at or above a task's stack pointer holds no heap
//!   reference (popped heap values are taken out, only scalars may linger), so nothing is kept
//!   alive by dead slots.
//! - Fuel is counted per instruction executed: a limit of `n` executes exactly `n`
//!   instructions before `OutOfFuel`. `OutOfFuel`, `MemoryLimit` and `Deadline` end the whole
//!   execution; try/catch never sees them. `StackOverflow` is an ordinary runtime error.
//! - Tasks are scheduled cooperatively in FIFO order; a spawned task is runnable at once but
//!   the spawner keeps running until it suspends. When the first task finishes the execution is
//!   done, unfinished tasks are cancelled and errors of tasks nobody awaited are written as
//!   warnings to the error sink.
//! - An engine (with its clones) keeps the emptied buffers of a few ended executions, and
//!   the scratch of the last quick run that ended as its one task, for the next to start on:
//!   no value survives in them, and what is kept is bounded (8 of each kind, a few KiB
//!   each).

pub mod convert;
pub mod program;
mod run;

use crate::blob::FunctionId;
use crate::function::{HostNative, Op, TaskHandle};
use crate::native::{NativeCtx, NativeError, NodeInfo};
use crate::portable::Portable;
use crate::store::CodeStore;
use crate::value::{Key, Value};
use program::{LinkError, Linked, Program};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::rc::{Rc, Weak};
use std::time::Instant;

/// Resource limits chosen by the host for one execution.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Instructions the execution may run in total (`None`: unlimited).
    pub fuel: Option<u64>,
    /// Maximum call depth per task; deeper calls raise a catchable `StackOverflow`.
    pub max_depth: usize,
    /// Live heap bytes the execution may add (`None`: unlimited).
    pub max_heap: Option<usize>,
    /// Wall-clock deadline for the whole execution.
    pub deadline: Option<Instant>,
}

/// The heap ceiling of [`Limits::default`]: 1 GiB. A host that wants no ceiling sets
/// `max_heap: None` and accepts that an absurd allocation can abort the process.
pub const DEFAULT_MAX_HEAP: usize = 1 << 30;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            fuel: None,
            max_depth: 10_000,
            max_heap: Some(DEFAULT_MAX_HEAP),
            deadline: None,
        }
    }
}

/// Which host-granted limit ended an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    OutOfFuel,
    MemoryLimit,
    Deadline,
}

impl LimitKind {
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::OutOfFuel => "OutOfFuel",
            LimitKind::MemoryLimit => "MemoryLimit",
            LimitKind::Deadline => "Deadline",
        }
    }
}

/// The natives a host offers scripts, on top of the builtins.
#[derive(Clone, Default)]
pub struct Engine {
    /// Shared by every execution started from this engine (cloned with it, copied only
    /// when a native is registered while executions hold it).
    natives: Rc<HashMap<String, HostNative>>,
    /// Buffers of finished tasks, for the next executions of this engine (and its clones)
    /// to start on.
    spare: Rc<RefCell<SpareBuffers>>,
}

/// The buffers of ended executions, emptied: their tasks' value stacks and frame lists,
/// their task tables and run queues, and one quick run's [`QuickScratch`]. Most executions
/// are short calls, and allocating and freeing these was a tenth of a host call. At most
/// [`SpareBuffers::KEPT`] of each are kept, none larger than a few KiB, so a deep recursion
/// or a swarm of tasks does not pin its memory.
#[derive(Default)]
struct SpareBuffers {
    stacks: Vec<Vec<Value>>,
    frames: Vec<Vec<Frame>>,
    tasks: Vec<Vec<Option<Task>>>,
    queues: Vec<VecDeque<u32>>,
    /// What the last quick run that ended as its one task left, for the next to start on.
    quick: Option<Box<QuickScratch>>,
}

/// What [`Execution::run_quick`] runs a call in: its first task and the tables an
/// execution would start with. Kept whole between runs (one pointer taken and put back), so
/// a call that ends as its one task builds and drops none of them. Kept, everything in it
/// is empty, its task idle and charging nothing, and its buffers within the bounds
/// [`SpareBuffers`] keeps.
struct QuickScratch {
    task: Task,
    tasks: Vec<Option<Task>>,
    queue: VecDeque<u32>,
    requests: Vec<RemoteRequest>,
    pending: HashMap<u64, (u32, Option<u32>)>,
    free_slots: Vec<u32>,
}

impl QuickScratch {
    /// The engine's kept scratch, or a new one.
    fn take(engine: &Engine) -> Box<QuickScratch> {
        let kept = engine.spare.borrow_mut().quick.take();
        kept.unwrap_or_else(|| {
            Box::new(QuickScratch {
                task: Task::idle(Vec::new(), Vec::new()),
                tasks: Vec::new(),
                queue: VecDeque::new(),
                requests: Vec::new(),
                pending: HashMap::new(),
                free_slots: Vec::new(),
            })
        })
    }

    /// Gives the scratch of a run that ended as its one task (its task's values dropped)
    /// back to `engine`, unless a buffer grew past what is kept.
    fn keep(mut self: Box<QuickScratch>, engine: &Engine) {
        let task = &mut self.task;
        if task.stack.capacity() > SpareBuffers::STACK_SLOTS
            || task.frames.capacity() > SpareBuffers::FRAMES
            || task.handlers.capacity() > SpareBuffers::FRAMES
        {
            return;
        }
        task.idle_again();
        self.tasks.clear();
        // Nothing else was used: the run spawned nothing and asked for no remote call.
        debug_assert!(
            self.queue.is_empty()
                && self.requests.is_empty()
                && self.pending.is_empty()
                && self.free_slots.is_empty()
        );
        engine.spare.borrow_mut().quick = Some(self);
    }
}

impl SpareBuffers {
    const KEPT: usize = 8;
    /// The most values a kept value stack holds.
    const STACK_SLOTS: usize = 256;
    /// The most frames (or handlers) a kept list holds.
    const FRAMES: usize = 64;

    /// An empty value stack and frame list, kept ones if there are.
    fn task(&mut self) -> (Vec<Value>, Vec<Frame>) {
        (
            self.stacks.pop().unwrap_or_default(),
            self.frames.pop().unwrap_or_default(),
        )
    }

    /// An empty task table and run queue, kept ones if there are.
    fn execution(&mut self) -> (Vec<Option<Task>>, VecDeque<u32>) {
        (
            self.tasks.pop().unwrap_or_default(),
            self.queues.pop().unwrap_or_default(),
        )
    }

    /// Keeps a finished task's `stack` and `frames`.
    fn keep_task(&mut self, stack: Vec<Value>, frames: Vec<Frame>) {
        keep(&mut self.stacks, stack, Self::STACK_SLOTS);
        keep(&mut self.frames, frames, Self::FRAMES);
    }

    /// Keeps an ended execution's task table and run queue.
    fn keep_execution(&mut self, tasks: Vec<Option<Task>>, mut queue: VecDeque<u32>) {
        keep(&mut self.tasks, tasks, 16);
        if self.queues.len() < Self::KEPT && queue.capacity() <= 64 {
            queue.clear();
            self.queues.push(queue);
        }
    }
}

/// Adds `buffer`, emptied, to `kept` if `kept` has room and `buffer` holds at most
/// `max_capacity` items.
fn keep<T>(kept: &mut Vec<Vec<T>>, mut buffer: Vec<T>, max_capacity: usize) {
    if kept.len() < SpareBuffers::KEPT && buffer.capacity() <= max_capacity {
        buffer.clear();
        kept.push(buffer);
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.natives.keys().collect();
        names.sort();
        f.debug_struct("Engine").field("natives", &names).finish()
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Registers a host native; it shadows a builtin of the same name.
    pub fn register_native(
        &mut self,
        name: impl Into<String>,
        f: impl Fn(&mut NativeCtx<'_>, &[Value]) -> Result<Value, NativeError> + 'static,
    ) {
        Rc::make_mut(&mut self.natives).insert(name.into(), Rc::new(f));
    }

    pub fn has_native(&self, name: &str) -> bool {
        self.natives.contains_key(name)
    }

    /// The names of the host natives registered (in no particular order).
    pub fn native_names(&self) -> impl Iterator<Item = &str> {
        self.natives.keys().map(String::as_str)
    }
}

/// Where an execution writes: `print` output and warnings.
pub struct ExecIo {
    pub out: Box<dyn Write>,
    pub err: Box<dyn Write>,
}

/// A writer that fetches its target anew for each operation (`std::io::stdout`, say).
/// For a function item it is zero-sized, unlike the handle `Stdout` itself, so boxing it
/// allocates nothing.
struct Forward<F>(F);

impl<W: Write, F: Fn() -> W> Write for Forward<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (self.0)().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        (self.0)().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (self.0)().flush()
    }
}

impl std::fmt::Debug for ExecIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecIo")
    }
}

impl ExecIo {
    /// The process's stdout and stderr. Building one allocates nothing (a host's every
    /// call builds one).
    pub fn stdio() -> ExecIo {
        ExecIo {
            out: Box::new(Forward(std::io::stdout)),
            err: Box::new(Forward(std::io::stderr)),
        }
    }

    /// Discards everything.
    pub fn null() -> ExecIo {
        ExecIo {
            out: Box::new(std::io::sink()),
            err: Box::new(std::io::sink()),
        }
    }

    /// Captures output and errors into shared buffers (tests, embedding).
    pub fn capture() -> (ExecIo, SharedBuf, SharedBuf) {
        let out = SharedBuf::default();
        let err = SharedBuf::default();
        (
            ExecIo {
                out: Box::new(out.clone()),
                err: Box::new(err.clone()),
            },
            out,
            err,
        )
    }
}

/// A cloneable in-memory writer.
#[derive(Clone, Default, Debug)]
pub struct SharedBuf(pub Rc<std::cell::RefCell<Vec<u8>>>);

impl SharedBuf {
    /// Everything written so far, as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One frame of a stack trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceFrame {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// The peer where this frame ran, when it ran as a remote body.
    pub peer: Option<String>,
    /// The function and instruction index, so a node that holds the function's debug info
    /// (the caller that shipped it) can name a frame the peer could not.
    pub code: Option<(FunctionId, u32)>,
}

/// A remote call the host must carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteRequest {
    pub id: u64,
    pub target: Portable,
    pub func: FunctionId,
    pub args: Vec<Portable>,
}

/// How a remote call failed: the thrown value or error map, and the remote stack trace.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFailure {
    pub error: Portable,
    pub trace: Vec<TraceFrame>,
}

impl RemoteFailure {
    /// A transport-level failure `{"kind": kind, "message": message}` with no trace.
    pub fn new(kind: &str, message: impl Into<String>) -> RemoteFailure {
        RemoteFailure {
            error: error_portable(kind, &message.into()),
            trace: Vec::new(),
        }
    }
}

/// An execution that ended in an error.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecError {
    /// The thrown value or error map.
    pub error: Portable,
    /// The error map's kind, or `"Thrown"` for any other value.
    pub kind: String,
    pub message: String,
    pub trace: Vec<TraceFrame>,
    /// Set when a host-granted limit ended the execution.
    pub limit: Option<LimitKind>,
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error[{}]: {}", self.kind, self.message)
    }
}

impl std::error::Error for ExecError {}

/// Why an execution could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    #[error("blob {0} is not available")]
    MissingBlob(crate::blob::BlobHash),
    #[error("function {0} does not exist")]
    MissingFunction(FunctionId),
    #[error("native `{0}` is not available")]
    MissingNative(String),
    #[error("function takes {expected} arguments, got {got}")]
    Arity { expected: u16, got: usize },
    #[error("function needs captures; start it through a closure")]
    NeedsCaptures,
    #[error("argument cannot be imported: {0}")]
    Import(String),
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
}

impl From<LinkError> for StartError {
    fn from(e: LinkError) -> StartError {
        match e {
            LinkError::MissingBlob(h) => StartError::MissingBlob(h),
            LinkError::MissingFunction(f) => StartError::MissingFunction(f),
            LinkError::MissingNative(n) => StartError::MissingNative(n),
        }
    }
}

/// What [`Execution::run`] came back with.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// The first task returned this value.
    Done(Portable),
    /// The first task failed, or a limit ended the execution.
    Failed(ExecError),
    /// Every task waits; call `run` again at `wake_at` (a timer or the deadline) or after
    /// [`Execution::resolve`]. New remote requests are in [`Execution::take_requests`].
    Blocked { wake_at: Option<Instant> },
    /// A slice of instructions was used; call `run` again to continue.
    Yielded,
}

/// What [`Execution::run_quick`] came back with.
#[derive(Debug)]
pub enum QuickRun {
    /// The call's value: it ended as its one task, and no execution was built.
    Done(Portable),
    /// The status of the first run of the execution started for the call, and that
    /// execution (ended, or to run on).
    Started(Status, Box<Execution>),
}

/// When a host loop runs an execution that has not ended next (see [`Status::ended`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NextRun {
    /// At once (it yielded).
    pub runnable: bool,
    /// At this time, if nothing it waits on comes first (it is blocked).
    pub wake_at: Option<Instant>,
}

impl Status {
    /// What a host loop does after a slice: `Ok` with the execution's result if it ended,
    /// else `Err` with when to run it next (its remote requests are to be started then).
    pub fn ended(self) -> Result<Result<Portable, ExecError>, NextRun> {
        match self {
            Status::Done(value) => Ok(Ok(value)),
            Status::Failed(error) => Ok(Err(error)),
            Status::Blocked { wake_at } => Err(NextRun {
                runnable: false,
                wake_at,
            }),
            Status::Yielded => Err(NextRun {
                runnable: true,
                wake_at: None,
            }),
        }
    }
}

/// A raised value with the stack trace of where it was raised.
#[derive(Debug, Clone)]
pub(crate) struct Raised {
    pub value: Value,
    pub trace: Vec<TraceFrame>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pub func: u32,
    /// Next instruction to run (saved when the frame is not the innermost).
    pub pc: u32,
    pub base: u32,
    /// Where the result goes in the caller (and where the caller's stack top ends).
    pub ret: u32,
    /// The ops of function `func` (its `RtFunction::ops`), so that a return in the fast
    /// loop reaches its caller's ops with one load. Only [`Frame::new`] sets it, from the
    /// function table entry `func`; the table only grows and an entry's ops never change
    /// (boxed, made once at link time), so it stays valid while the execution lives.
    ops: *const [Op],
}

impl Frame {
    /// The frame of function `func` (`ops`: its function table entry's ops), its locals
    /// from slot `base` up, its result going to slot `ret`.
    pub fn new(func: u32, ops: &[Op], base: usize, ret: usize) -> Frame {
        Frame {
            func,
            pc: 0,
            base: base as u32,
            ret: ret as u32,
            ops,
        }
    }

    /// The ops of the frame's function.
    pub fn ops(&self) -> *const [Op] {
        self.ops
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Handler {
    /// Index of the frame that installed it.
    pub frame: u32,
    pub pc: u32,
    pub sp: u32,
}

#[derive(Debug)]
pub(crate) enum Resume {
    Push(Value),
    Raise(Raised),
    Jump(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TaskState {
    Ready,
    Sleeping(Instant),
    AwaitTask(u32),
    AwaitRemote(u64),
    Done,
}

#[derive(Debug)]
pub(crate) struct Task {
    pub stack: Vec<Value>,
    pub sp: usize,
    pub frames: Vec<Frame>,
    pub handlers: Vec<Handler>,
    pub state: TaskState,
    pub resume: Option<Resume>,
    pub result: Option<Result<Value, Raised>>,
    pub waiters: Vec<u32>,
    pub awaited: bool,
    /// The script's handle on this task (`Value::Task`), made by `spawn`: once no value
    /// holds it, nobody can await the task any more. Empty for the first task.
    pub handle: Weak<TaskHandle>,
    /// Heap accounting for the task's value stack and frames.
    pub charge: crate::heap::Charge,
}

impl Task {
    /// A task that runs nothing yet, on `stack` and `frames` (both empty), charging nothing:
    /// [`Task::fill_stack`] and then [`Task::enter`] ready it.
    fn idle(stack: Vec<Value>, frames: Vec<Frame>) -> Task {
        Task {
            stack,
            sp: 0,
            frames,
            handlers: Vec::new(),
            state: TaskState::Done,
            resume: None,
            result: None,
            waiters: Vec::new(),
            awaited: false,
            handle: Weak::new(),
            charge: crate::heap::Charge::none(),
        }
    }

    /// Fills the (empty) value stack of an idle task for a call of `func`: `callee`, then
    /// `argc` slots for the arguments (`nil` until the caller stores them), then the
    /// function's other locals.
    fn fill_stack(&mut self, program: &Program, func: u32, callee: Value, argc: usize) {
        let slots = 1 + program.get(func).map_or(0, |f| f.frame_size()).max(argc);
        self.stack.reserve(slots + 8);
        self.stack.push(callee);
        self.stack.resize_with(slots, || Value::Nil);
    }

    /// Readies the task, its stack filled ([`Task::fill_stack`]), with a bottom frame that
    /// runs `func`. Done once `program` is final for now: the frame points at the
    /// function's ops in it.
    fn enter(&mut self, program: &Program, func: u32) {
        let entry = program.get(func);
        let size = entry.map_or(0, |f| f.frame_size());
        // An unknown `func` gets no ops: the general loop finds no function and ends the task.
        let ops = entry.map_or(&[][..], |f| &f.ops);
        self.frames.push(Frame::new(func, ops, 1, 0));
        self.sp = 1 + entry.map_or(0, |f| f.locals as usize);
        self.state = TaskState::Ready;
        self.charge.resize(task_bytes(size + 1));
    }

    /// Makes a task that ended, its values already dropped, idle again.
    fn idle_again(&mut self) {
        debug_assert!(self.stack.is_empty());
        self.frames.clear();
        self.handlers.clear();
        self.waiters.clear();
        self.resume = None;
        self.result = None;
        self.state = TaskState::Done;
        self.awaited = false;
        self.handle = Weak::new();
        self.charge.resize(0);
    }
}

/// Bytes charged for a task whose value stack holds `slots` values.
pub(crate) fn task_bytes(slots: usize) -> usize {
    256 + slots * std::mem::size_of::<Value>()
}

/// Finished tasks an execution keeps at least before it frees the slots it can.
const FREE_AT_LEAST: usize = 64;

/// Instructions run per [`Execution::run`] before it yields, by default.
pub const DEFAULT_SLICE: u64 = 1 << 20;
/// Instructions between deadline checks.
const DEADLINE_CHUNK: u64 = 1024;

/// A running call: tasks, their function table and the host-facing state.
pub struct Execution {
    program: Program,
    engine: Engine,
    store: CodeStore,
    tasks: Vec<Option<Task>>,
    queue: VecDeque<u32>,
    /// The tasks that are sleeping, in the order they fell asleep: the scheduler looks at
    /// these, not at every task the execution ever spawned (finished ones stay in `tasks`).
    sleepers: Vec<u32>,
    /// Finished tasks (not the first) whose slots are not free yet: freed, by
    /// [`Execution::free_finished`], once no value holds their handle.
    finished_tasks: Vec<u32>,
    /// Task slots free for `spawn` to reuse.
    free_slots: Vec<u32>,
    /// `finished_tasks` is looked at again when it holds this many.
    free_at: usize,
    requests: Vec<RemoteRequest>,
    /// Pending remote call id → (task, fallback pc of `RemoteElse`): exactly the tasks that
    /// await a remote call.
    pending: HashMap<u64, (u32, Option<u32>)>,
    next_request: u64,
    node: NodeInfo,
    limits: Limits,
    fuel_left: Option<u64>,
    heap_limit: Option<usize>,
    slice: u64,
    io: ExecIo,
    finished: Option<Ended>,
}

/// How an execution ended, kept so that [`Execution::run`] answers the same when called
/// again.
enum Ended {
    /// The first task's value, as a VM value: exported for each answer. (Keeping the
    /// exported copy instead cost a deep copy of every result, a fifth of a call that
    /// returns a large list.)
    Value(Value),
    /// Boxed: an error is rare and large, and the execution (moved whole more than once per
    /// call) carries this field inline.
    Failed(Box<ExecError>),
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execution")
            .field("tasks", &self.tasks.len())
            .field("fuel_left", &self.fuel_left)
            .finish()
    }
}

fn error_portable(kind: &str, message: &str) -> Portable {
    Portable::Map(vec![
        (Portable::Str("kind".into()), Portable::Str(kind.into())),
        (
            Portable::Str("message".into()),
            Portable::Str(message.into()),
        ),
    ])
}

/// `(kind, message)` of an error map, if the value is one.
pub(crate) fn error_parts(value: &Value) -> Option<(String, String)> {
    let Value::Map(m) = value else { return None };
    let get = |k: &str| Key::from_value(&Value::str(k)).and_then(|key| m.get(&key));
    let kind = get("kind")?.as_str()?.to_string();
    let message = get("message")
        .map(|v| match v.as_str() {
            Some(s) => s.to_string(),
            None => crate::display::display(&v),
        })
        .unwrap_or_default();
    Some((kind, message))
}

/// Runs `task` in chunks until it stops, `slice_left` is used up or a limit is hit: fuel
/// (`fuel_left`, counted down with the slice) or `deadline` (checked between chunks of
/// [`DEADLINE_CHUNK`] instructions).
fn stretch(
    program: &Program,
    task: &mut Task,
    ctx: &mut run::Ctx<'_>,
    slice_left: &mut u64,
    fuel_left: &mut Option<u64>,
    deadline: Option<Instant>,
) -> run::Exit {
    loop {
        if *slice_left == 0 {
            return run::Exit::Budget;
        }
        if *fuel_left == Some(0) {
            return run::Exit::Limit(LimitKind::OutOfFuel);
        }
        let mut chunk = *slice_left;
        if let Some(f) = *fuel_left {
            chunk = chunk.min(f);
        }
        if deadline.is_some() {
            chunk = chunk.min(DEADLINE_CHUNK);
        }
        let mut budget = chunk;
        let exit = run::run_task(program, task, ctx, &mut budget);
        let used = chunk - budget;
        *slice_left -= used;
        if let Some(f) = fuel_left {
            *f -= used;
        }
        match exit {
            run::Exit::Budget => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return run::Exit::Limit(LimitKind::Deadline);
                }
            }
            other => return other,
        }
    }
}

/// Readies `task` (idle) as the first task of a call of `program`'s function `index` with
/// `args`, imported (which may link more functions into `program`: a copy of it, if it was
/// shared). On an error the task may hold some of the arguments.
fn ready_first_task(
    task: &mut Task,
    engine: &Engine,
    store: &CodeStore,
    program: &mut Program,
    index: u32,
    args: &[Portable],
) -> Result<(), StartError> {
    let (arity, upvals) = program.get(index).map_or((0, 0), |f| (f.arity, f.upvals));
    if upvals != 0 {
        return Err(StartError::NeedsCaptures);
    }
    if arity as usize != args.len() {
        return Err(StartError::Arity {
            expected: arity,
            got: args.len(),
        });
    }
    task.fill_stack(program, index, Value::Nil, args.len());
    let mut linker = convert::Linker {
        program: &mut *program,
        store,
        natives: &engine.natives,
    };
    for (slot, a) in task.stack[1..].iter_mut().zip(args) {
        *slot = convert::import(a, &mut linker).map_err(|e| {
            StartError::Import(
                error_parts(&e)
                    .map(|(_, m)| m)
                    .unwrap_or_else(|| "bad value".into()),
            )
        })?;
    }
    task.enter(program, index);
    Ok(())
}

impl Execution {
    /// Links `func` (and everything it references) from `store`, imports `args` and makes
    /// the first task ready. Nothing runs until [`Execution::run`].
    pub fn start(
        engine: &Engine,
        store: &CodeStore,
        func: FunctionId,
        args: Vec<Portable>,
        node: NodeInfo,
        limits: Limits,
        io: ExecIo,
    ) -> Result<Execution, StartError> {
        let linked = Linked::link(store, &engine.natives, func)?;
        Execution::start_linked(engine, store, linked, &args, node, limits, io)
    }

    /// [`Execution::start`] from a program already linked (from `store`, with `engine`'s
    /// natives), e.g. by [`LinkCache::get`](program::LinkCache::get).
    pub fn start_linked(
        engine: &Engine,
        store: &CodeStore,
        linked: Linked,
        args: &[Portable],
        node: NodeInfo,
        limits: Limits,
        io: ExecIo,
    ) -> Result<Execution, StartError> {
        let heap_base = crate::heap::live();
        let Linked {
            mut program,
            entry: index,
        } = linked;
        let (stack, frames) = engine.spare.borrow_mut().task();
        let mut task = Task::idle(stack, frames);
        ready_first_task(&mut task, engine, store, &mut program, index, args)?;
        let (mut tasks, mut queue) = engine.spare.borrow_mut().execution();
        tasks.push(Some(task));
        queue.push_back(0);
        let heap_limit = limits.max_heap.map(|m| heap_base.saturating_add(m));
        Ok(Execution::assemble(
            engine,
            store,
            program,
            (tasks, queue),
            node,
            limits,
            io,
            heap_limit,
        ))
    }

    /// An execution of `program` whose task table and run queue are `tasks`, nothing else
    /// under way yet, with the default slice.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        engine: &Engine,
        store: &CodeStore,
        program: Program,
        (tasks, queue): (Vec<Option<Task>>, VecDeque<u32>),
        node: NodeInfo,
        limits: Limits,
        io: ExecIo,
        heap_limit: Option<usize>,
    ) -> Execution {
        Execution {
            program,
            engine: engine.clone(),
            store: store.clone(),
            tasks,
            queue,
            sleepers: Vec::new(),
            finished_tasks: Vec::new(),
            free_slots: Vec::new(),
            free_at: FREE_AT_LEAST,
            requests: Vec::new(),
            pending: HashMap::new(),
            next_request: 1,
            node,
            fuel_left: limits.fuel,
            heap_limit,
            limits,
            slice: DEFAULT_SLICE,
            io,
            finished: None,
        }
    }

    /// [`Execution::start_linked`], then [`Execution::run`] with `slice` instructions —
    /// except that a call that ends as its one task, never waiting, gets no execution built
    /// around it (no task table, scheduler or state between runs): for a small call, that
    /// is most of the cost of starting, running and dropping an execution. Every other call
    /// gets the execution as that first run leaves it, and its later runs get `slice`
    /// instructions each too. `node` is borrowed: a run that ends here needs no copy of it
    /// (an execution built to go on takes one). `now` is the clock as the run starts: the
    /// deadline is judged by it, with no second reading.
    #[allow(clippy::too_many_arguments)]
    pub fn run_quick(
        engine: &Engine,
        store: &CodeStore,
        linked: Linked,
        args: &[Portable],
        node: &NodeInfo,
        limits: Limits,
        mut io: ExecIo,
        slice: u64,
        now: Instant,
    ) -> Result<QuickRun, StartError> {
        if limits.deadline.is_some_and(|d| now >= d) {
            let node = node.clone();
            let mut exec = Execution::start_linked(engine, store, linked, args, node, limits, io)?;
            exec.slice = slice;
            return Ok(QuickRun::Started(exec.run(now), Box::new(exec)));
        }
        let heap_base = crate::heap::live();
        let Linked {
            mut program,
            entry: index,
        } = linked;
        let mut scratch = QuickScratch::take(engine);
        ready_first_task(&mut scratch.task, engine, store, &mut program, index, args)?;
        let heap_limit = limits.max_heap.map(|m| heap_base.saturating_add(m));
        let heap_guard = heap_limit.map(HeapGuard::install);
        let mut next_request = 1;
        let (mut slice_left, mut fuel_left) = (slice, limits.fuel);
        let exit = {
            let s = &mut *scratch;
            // Slot 0 is the first task's, out of the table while it runs (as in `run`).
            s.tasks.push(None);
            let mut ctx = run::Ctx {
                tasks: &mut s.tasks,
                queue: &mut s.queue,
                requests: &mut s.requests,
                pending: &mut s.pending,
                next_request: &mut next_request,
                out: &mut *io.out,
                node,
                now,
                max_depth: limits.max_depth,
                check_heap: heap_limit.is_some(),
                self_id: 0,
                spare: &engine.spare,
                free_slots: &mut s.free_slots,
            };
            stretch(
                &program,
                &mut s.task,
                &mut ctx,
                &mut slice_left,
                &mut fuel_left,
                limits.deadline,
            )
        };
        let exit = match exit {
            run::Exit::Finished(Ok(value))
                if scratch.tasks.len() == 1 && scratch.requests.is_empty() =>
            {
                // The task's values are dropped first, so that a value the run built or was
                // given is held only by `value` and can give up its contents on export.
                scratch.task.stack.clear();
                match convert::export_owned(value) {
                    Ok(answer) => {
                        scratch.keep(engine);
                        return Ok(QuickRun::Done(answer));
                    }
                    // The task has ended: its cleared stack is not read again.
                    Err(value) => run::Exit::Finished(Ok(value)),
                }
            }
            other => other,
        };
        // Anything else: the execution as `run` has it at this point, which goes on.
        let QuickScratch {
            task,
            tasks,
            queue,
            requests,
            pending,
            free_slots,
        } = *scratch;
        let mut exec = Box::new(Execution::assemble(
            engine,
            store,
            program,
            (tasks, queue),
            node.clone(),
            limits,
            io,
            heap_limit,
        ));
        exec.requests = requests;
        exec.pending = pending;
        exec.next_request = next_request;
        exec.free_slots = free_slots;
        exec.fuel_left = fuel_left;
        exec.slice = slice_left;
        let status = match exec.settle(0, task, exit) {
            Some(status) => status,
            // The first task waits: the others run on in what is left of the slice.
            None => exec.run(now),
        };
        drop(heap_guard);
        exec.slice = slice;
        Ok(QuickRun::Started(status, exec))
    }

    /// Runs `func(args)` to completion on this thread: a convenience for hosts and tests.
    /// Sleeps really sleep; remote requests fail with `Unreachable` (there is no network).
    pub fn call(
        engine: &Engine,
        store: &CodeStore,
        func: FunctionId,
        args: Vec<Portable>,
        limits: Limits,
        io: ExecIo,
    ) -> Result<Portable, CallError> {
        let mut exec =
            Execution::start(engine, store, func, args, NodeInfo::default(), limits, io)?;
        loop {
            match exec.run(Instant::now()) {
                Status::Done(v) => return Ok(v),
                Status::Failed(e) => return Err(CallError::Failed(Box::new(e))),
                Status::Yielded => {}
                Status::Blocked { wake_at } => {
                    let reqs = exec.take_requests();
                    if !reqs.is_empty() {
                        for r in reqs {
                            exec.resolve(
                                r.id,
                                Err(RemoteFailure::new("Unreachable", "no peers in this host")),
                            );
                        }
                        continue;
                    }
                    match wake_at {
                        Some(t) => std::thread::sleep(t.saturating_duration_since(Instant::now())),
                        None => {
                            return Err(CallError::Failed(Box::new(exec.deadlock_error())));
                        }
                    }
                }
            }
        }
    }

    /// Sets how many instructions one `run` executes before returning `Yielded`.
    pub fn set_slice(&mut self, instructions: u64) {
        self.slice = instructions.max(1);
    }

    /// Replaces the store used to link closures arriving later (remote results).
    pub fn set_store(&mut self, store: &CodeStore) {
        self.store = store.clone();
    }

    /// The node identity this execution reports (`here()`, `caller()`, `peers()`).
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Fuel left, if limited.
    pub fn fuel_left(&self) -> Option<u64> {
        self.fuel_left
    }

    /// New remote requests since the last call.
    pub fn take_requests(&mut self) -> Vec<RemoteRequest> {
        std::mem::take(&mut self.requests)
    }

    /// Reports the outcome of remote call `id`; unknown ids are ignored.
    pub fn resolve(&mut self, id: u64, outcome: Result<Portable, RemoteFailure>) {
        let Some((task_id, fallback)) = self.pending.remove(&id) else {
            return;
        };
        let resume = match outcome {
            Ok(p) => {
                let mut linker = convert::Linker {
                    program: &mut self.program,
                    store: &self.store,
                    natives: &self.engine.natives,
                };
                match convert::import(&p, &mut linker) {
                    Ok(v) => Resume::Push(v),
                    Err(e) => Resume::Raise(Raised {
                        value: e,
                        trace: Vec::new(),
                    }),
                }
            }
            Err(failure) => {
                let kind = match &failure.error {
                    Portable::Map(entries) => entries.iter().find_map(|(k, v)| match (k, v) {
                        (Portable::Str(k), Portable::Str(v)) if k == "kind" => Some(v.clone()),
                        _ => None,
                    }),
                    _ => None,
                };
                let failover = kind
                    .as_deref()
                    .is_some_and(|k| crate::hop::FAILOVER_KINDS.contains(&k));
                match fallback {
                    Some(pc) if failover => Resume::Jump(pc),
                    _ => {
                        let mut linker = convert::Linker {
                            program: &mut self.program,
                            store: &self.store,
                            natives: &self.engine.natives,
                        };
                        let value =
                            convert::import(&failure.error, &mut linker).unwrap_or_else(|e| e);
                        Resume::Raise(Raised {
                            value,
                            trace: failure.trace,
                        })
                    }
                }
            }
        };
        if let Some(Some(task)) = self.tasks.get_mut(task_id as usize) {
            if task.state == TaskState::AwaitRemote(id) {
                task.resume = Some(resume);
                task.state = TaskState::Ready;
                self.queue.push_back(task_id);
            }
        }
    }

    /// Ends the execution now; unfinished tasks are dropped.
    pub fn cancel(&mut self) {
        self.requests.clear();
        if self.finished.is_none() {
            self.end(Ended::Failed(Box::new(ExecError {
                error: error_portable("Cancelled", "the execution was cancelled"),
                kind: "Cancelled".into(),
                message: "the execution was cancelled".into(),
                trace: Vec::new(),
                limit: None,
            })));
        }
    }

    /// Runs until the execution is done, fails, blocks, or has used a slice of instructions.
    pub fn run(&mut self, now: Instant) -> Status {
        if let Some(ended) = &self.finished {
            return self.status_of(ended);
        }
        let _heap_guard = self.heap_limit.map(HeapGuard::install);
        let mut slice_left = self.slice;
        loop {
            if self
                .limits
                .deadline
                .is_some_and(|d| now >= d || Instant::now() >= d)
            {
                return self.fail_limit(LimitKind::Deadline, None);
            }
            self.wake_sleepers(now);
            let Some(task_id) = self.queue.pop_front() else {
                return self.blocked_status();
            };
            let Some(mut task) = self.tasks.get_mut(task_id as usize).and_then(Option::take) else {
                continue;
            };
            if task.state != TaskState::Ready {
                self.tasks[task_id as usize] = Some(task);
                continue;
            }
            let mut ctx = run::Ctx {
                tasks: &mut self.tasks,
                queue: &mut self.queue,
                requests: &mut self.requests,
                pending: &mut self.pending,
                next_request: &mut self.next_request,
                out: &mut *self.io.out,
                node: &self.node,
                now,
                max_depth: self.limits.max_depth,
                check_heap: self.heap_limit.is_some(),
                self_id: task_id,
                spare: &self.engine.spare,
                free_slots: &mut self.free_slots,
            };
            let exit = stretch(
                &self.program,
                &mut task,
                &mut ctx,
                &mut slice_left,
                &mut self.fuel_left,
                self.limits.deadline,
            );
            if let Some(status) = self.settle(task_id, task, exit) {
                return status;
            }
        }
    }

    /// Puts task `task_id` back after a stretch that ended with `exit`: `Some(status)` if
    /// that ends the run.
    fn settle(&mut self, task_id: u32, mut task: Task, exit: run::Exit) -> Option<Status> {
        match exit {
            run::Exit::Budget => {
                // Slice used up: the task stays first in line.
                self.tasks[task_id as usize] = Some(task);
                self.queue.push_front(task_id);
                Some(Status::Yielded)
            }
            run::Exit::Suspend => {
                match task.state {
                    TaskState::Ready => self.queue.push_back(task_id),
                    TaskState::Sleeping(_) => self.sleepers.push(task_id),
                    _ => {}
                }
                self.tasks[task_id as usize] = Some(task);
                None
            }
            run::Exit::Limit(kind) => {
                let trace = run::trace(&self.program, &task.frames, &self.node);
                drop(task);
                Some(self.fail_limit(kind, Some(trace)))
            }
            run::Exit::Finished(result) => {
                task.state = TaskState::Done;
                // Its values are dropped before the pool is borrowed.
                let mut stack = std::mem::take(&mut task.stack);
                stack.clear();
                let frames = std::mem::take(&mut task.frames);
                self.engine.spare.borrow_mut().keep_task(stack, frames);
                if task_id == 0 && self.tasks.len() == 1 {
                    // The only task there ever was: nothing awaits it and nothing else
                    // is left to report, so it need not go back into its slot first.
                    drop(task);
                    return Some(self.end_with(Some(result)));
                }
                task.charge.resize(task_bytes(0));
                task.handlers = Vec::new();
                for w in std::mem::take(&mut task.waiters) {
                    if let Some(Some(waiter)) = self.tasks.get_mut(w as usize) {
                        waiter.resume = Some(match &result {
                            Ok(v) => Resume::Push(v.clone()),
                            Err(r) => Resume::Raise(r.clone()),
                        });
                        waiter.state = TaskState::Ready;
                        self.queue.push_back(w);
                        task.awaited = true;
                    }
                }
                task.result = Some(result);
                self.tasks[task_id as usize] = Some(task);
                if task_id == 0 {
                    return Some(self.finish());
                }
                self.finished_tasks.push(task_id);
                if self.finished_tasks.len() >= self.free_at {
                    self.free_finished();
                }
                None
            }
        }
    }

    /// Frees the slots of finished tasks nobody can await any more (no value holds their
    /// handle), warning about a failure nobody awaited as [`Execution::finish`] does for
    /// the rest. Runs when `finished_tasks` has doubled since it last ran, so a script that
    /// spawns in a loop keeps a task table (and a heap account) the size of what it still
    /// holds, at a constant cost per task.
    fn free_finished(&mut self) {
        let tasks = &self.tasks;
        let (free, kept): (Vec<u32>, Vec<u32>) = self.finished_tasks.iter().partition(|&&id| {
            tasks
                .get(id as usize)
                .and_then(Option::as_ref)
                .is_none_or(|t| t.handle.strong_count() == 0)
        });
        self.finished_tasks = kept;
        self.free_at = (2 * self.finished_tasks.len()).max(FREE_AT_LEAST);
        for id in free {
            let Some(task) = self.tasks.get_mut(id as usize).and_then(Option::take) else {
                continue;
            };
            if let (Some(Err(r)), false) = (task.result, task.awaited) {
                self.warn_unawaited(r);
            }
            self.free_slots.push(id);
        }
    }

    fn warn_unawaited(&mut self, raised: Raised) {
        let e = self.exec_error(raised);
        let _ = writeln!(self.io.err, "warning: a task nobody awaited failed: {e}");
    }

    /// Makes the sleepers whose time has come ready, in deadline order (task order among
    /// equal deadlines).
    fn wake_sleepers(&mut self, now: Instant) {
        if self.sleepers.is_empty() {
            return;
        }
        let mut woken: SmallVec<[(Instant, u32); 4]> = SmallVec::new();
        let tasks = &mut self.tasks;
        self.sleepers.retain(|&id| {
            let Some(Some(task)) = tasks.get_mut(id as usize) else {
                return false;
            };
            match task.state {
                TaskState::Sleeping(t) if t > now => true,
                TaskState::Sleeping(t) => {
                    task.state = TaskState::Ready;
                    task.resume = Some(Resume::Push(Value::Nil));
                    woken.push((t, id));
                    false
                }
                _ => false,
            }
        });
        woken.sort_unstable();
        self.queue.extend(woken.into_iter().map(|(_, id)| id));
    }

    fn blocked_status(&mut self) -> Status {
        let mut wake: Option<Instant> = None;
        for &id in &self.sleepers {
            if let Some(Some(task)) = self.tasks.get(id as usize) {
                if let TaskState::Sleeping(t) = task.state {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                }
            }
        }
        let waiting_remote = !self.pending.is_empty();
        if wake.is_none() && !waiting_remote && self.requests.is_empty() {
            let e = self.deadlock_error();
            self.end(Ended::Failed(Box::new(e.clone())));
            return Status::Failed(e);
        }
        if let Some(d) = self.limits.deadline {
            wake = Some(wake.map_or(d, |w| w.min(d)));
        }
        Status::Blocked { wake_at: wake }
    }

    fn deadlock_error(&self) -> ExecError {
        let message = "every task is waiting on another task (deadlock)";
        ExecError {
            error: error_portable("Deadlock", message),
            kind: "Deadlock".into(),
            message: message.into(),
            trace: Vec::new(),
            limit: None,
        }
    }

    fn fail_limit(&mut self, kind: LimitKind, trace: Option<Vec<TraceFrame>>) -> Status {
        let message = match kind {
            LimitKind::OutOfFuel => format!(
                "the execution used all of its {} instructions of fuel",
                self.limits.fuel.unwrap_or(0)
            ),
            LimitKind::MemoryLimit => match self.limits.max_heap {
                Some(limit) => format!("the execution passed its heap limit of {limit} bytes"),
                None => "the execution asked for more memory than can be allocated".to_string(),
            },
            LimitKind::Deadline => "the execution passed its deadline".to_string(),
        };
        let err = ExecError {
            error: error_portable(kind.name(), &message),
            kind: kind.name().into(),
            message,
            trace: trace.unwrap_or_default(),
            limit: Some(kind),
        };
        self.tasks.clear();
        self.queue.clear();
        self.end(Ended::Failed(Box::new(err.clone())));
        Status::Failed(err)
    }

    fn end(&mut self, ended: Ended) {
        // Emptied before the pool is borrowed (dropping a task drops its values).
        self.tasks.clear();
        self.queue.clear();
        let (tasks, queue) = (
            std::mem::take(&mut self.tasks),
            std::mem::take(&mut self.queue),
        );
        self.engine.spare.borrow_mut().keep_execution(tasks, queue);
        self.pending.clear();
        self.sleepers.clear();
        self.finished_tasks.clear();
        self.free_slots.clear();
        self.finished = Some(ended);
    }

    /// The first task finished: report unawaited task errors, cancel the rest.
    fn finish(&mut self) -> Status {
        let mut tasks = std::mem::take(&mut self.tasks);
        let mut first = None;
        for (id, task) in tasks.iter_mut().enumerate() {
            let Some(task) = task else { continue };
            match (id, task.result.take()) {
                (0, result) => first = result,
                (_, Some(Err(r))) if !task.awaited => self.warn_unawaited(r),
                _ => {}
            }
        }
        self.tasks = tasks;
        self.end_with(first)
    }

    /// Ends the execution with the first task's `result` (`None`: it has none), and says so.
    fn end_with(&mut self, result: Option<Result<Value, Raised>>) -> Status {
        let ended = match result {
            Some(Err(r)) => Ended::Failed(Box::new(self.exec_error(r))),
            Some(Ok(v)) => Ended::Value(v),
            None => Ended::Value(Value::Nil),
        };
        let status = self.status_of(&ended);
        self.end(ended);
        status
    }

    /// What `run` answers once the execution ended `ended`: the first task's value exported
    /// (or why it cannot be), or the error.
    fn status_of(&self, ended: &Ended) -> Status {
        match ended {
            Ended::Value(v) => match convert::export(v) {
                Ok(p) => Status::Done(p),
                Err(e) => Status::Failed(self.exec_error(Raised {
                    value: e,
                    trace: Vec::new(),
                })),
            },
            Ended::Failed(e) => Status::Failed((**e).clone()),
        }
    }

    fn exec_error(&self, raised: Raised) -> ExecError {
        let (kind, message) = error_parts(&raised.value)
            .unwrap_or_else(|| ("Thrown".to_string(), crate::display::display(&raised.value)));
        let error = convert::export(&raised.value)
            .unwrap_or_else(|_| Portable::Str(crate::display::display(&raised.value)));
        ExecError {
            error,
            kind,
            message,
            trace: raised.trace,
            limit: None,
        }
    }
}

/// [`Execution::call`]'s error: it could not start, or it failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Failed(Box<ExecError>),
}

/// Installs a heap limit for the duration of a `run` and restores the previous one.
struct HeapGuard(usize);

impl HeapGuard {
    fn install(limit: usize) -> HeapGuard {
        HeapGuard(crate::heap::set_limit(limit))
    }
}

impl Drop for HeapGuard {
    fn drop(&mut self) {
        crate::heap::set_limit(self.0);
    }
}
