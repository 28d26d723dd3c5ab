"""Many-to-one classification of variable-length sequences with fusedrnn.

Each sequence has 4 features per step and a random length; its label is the feature whose sum
over the sequence's own steps is largest (4 classes, chance 0.25). The batch is padded to
[T, N, I] with *random noise* past each length, and the LSTM is given ``lengths=``: no sorting,
no packing, and the noise never reaches h_n (each sample's state after its own last step).
A Linear head reads h_n[-1]; CrossEntropyLoss, Adam and gradient clipping train it, and the
model and optimizer are saved with fr.save and restored with fr.load.

    python examples/classify_with_lengths.py            # about 5 s on 2 cores
    python examples/classify_with_lengths.py --epochs 3 --hidden 32 --json
"""
import argparse
import json
import os
import tempfile

import numpy as np

import fusedrnn as fr
from fusedrnn.cli_commands import at_least, nonnegative_int, positive_float, positive_int


def make_data(n, max_len, rng, features=4):
    """x [T, N, I] float32 (noise past each length), lengths [N], y [N] ints."""
    lengths = rng.integers(2, max_len + 1, n)
    x = rng.standard_normal((max_len, n, features)).astype(np.float32)
    valid = np.arange(max_len)[:, None] < lengths[None, :]            # [T, N]
    y = np.argmax((x * valid[:, :, None]).sum(axis=0), axis=1)         # label from valid steps only
    return x, lengths, y


def predict(lstm, head, x, lengths):
    """Logits [N, 4] from an inference-mode forward (nothing saved for backward)."""
    lstm.eval(); head.eval()
    _, (h_n, _) = lstm(x, lengths=lengths)
    lstm.train(); head.train()
    return head(h_n[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=12)
    p.add_argument("--hidden", type=positive_int, default=64)
    p.add_argument("--max-len", type=at_least(2), default=20)
    p.add_argument("--train-size", type=positive_int, default=4000)
    p.add_argument("--test-size", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=5e-3)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    x_train, len_train, y_train = make_data(args.train_size, args.max_len, rng)
    x_test, len_test, y_test = make_data(args.test_size, args.max_len, rng)

    lstm = fr.nn.LSTM(4, args.hidden, seed=args.seed)
    head = fr.nn.Linear(args.hidden, 4, seed=args.seed + 1)
    loss_fn = fr.nn.CrossEntropyLoss()
    params = list(lstm.parameters()) + list(head.parameters())
    opt = fr.optim.Adam(params, lr=args.lr)
    sched = fr.optim.CosineAnnealingLR(opt, T_max=args.epochs)

    first_loss = None
    for epoch in range(args.epochs):
        order = rng.permutation(args.train_size)
        losses = []
        for start in range(0, args.train_size, args.batch_size):
            idx = order[start:start + args.batch_size]
            x, lengths = x_train[:, idx], len_train[idx]
            out, (h_n, c_n) = lstm(x, lengths=lengths)
            loss = loss_fn(head(h_n[-1]), y_train[idx])
            dh_n = np.zeros_like(h_n)
            dh_n[-1] = head.backward(loss_fn.backward())              # the loss reaches only h_n
            lstm.backward(np.zeros_like(out), (dh_n, None))
            fr.optim.clip_grad_norm_(params, 5.0)
            opt.step()
            lstm.zero_grad(); head.zero_grad()
            losses.append(loss)
        sched.step()
        first_loss = losses[0] if first_loss is None else first_loss
        acc = float(np.mean(predict(lstm, head, x_test, len_test).argmax(axis=1) == y_test))
        print(f"epoch {epoch + 1:2d}  train loss {np.mean(losses):.4f}  test accuracy {acc:.3f}")

    # Save a checkpoint, load it into fresh layers and check they predict the same.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "classifier.npz")
        fr.save({"lstm": lstm, "head": head, "optimizer": opt, "epoch": args.epochs}, path)
        ckpt = fr.load(path)
    lstm2, head2 = fr.nn.LSTM(4, args.hidden), fr.nn.Linear(args.hidden, 4)
    lstm2.load_state_dict(ckpt["lstm"]); head2.load_state_dict(ckpt["head"])
    opt2 = fr.optim.Adam(list(lstm2.parameters()) + list(head2.parameters()))
    opt2.load_state_dict(ckpt["optimizer"])                          # to resume training
    logits = predict(lstm, head, x_test, len_test)
    reloaded = bool(np.array_equal(predict(lstm2, head2, x_test, len_test), logits))

    test_acc = float(np.mean(logits.argmax(axis=1) == y_test))
    majority = float(np.mean(y_test == np.argmax(np.bincount(y_train))))  # (train's class)
    metrics = {"test_accuracy": test_acc, "majority_baseline": majority,
               "first_loss": float(first_loss), "final_loss": float(np.mean(losses)),
               "checkpoint_reloaded_same": reloaded}
    print(f"test accuracy {test_acc:.3f} (majority class {majority:.3f}); "
          f"checkpoint reloaded with identical predictions: {reloaded}")
    if args.json:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
