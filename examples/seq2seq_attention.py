"""Sequence-to-sequence with attention: fr.nn.Seq2Seq learns to reverse a string of digits.

Token ids follow Seq2Seq's conventions: 0 pad, 1 begin (fed to the decoder by the model, never
written in the targets), 2 end, and the digits 0-9 as ids 3-12. A source is a few digits,
padded with 0 to the batch's longest (its true length in ``src_lengths``); its target is the
same digits reversed, then the end token, padded with 0. A bidirectional LSTM encoder and a
decoder with Bahdanau attention are trained with teacher forcing; greedy decoding and beam
search then translate held-out inputs. Reversal shows attention at work: output step t looks
at source position len - 1 - t (an anti-diagonal attention map).

    python examples/seq2seq_attention.py              # 10-30 s on 2 cores, by their load
    python examples/seq2seq_attention.py --epochs 2 --json
"""
import argparse
import json

import numpy as np

import fusedrnn as fr
from fusedrnn.cli_commands import nonnegative_int, positive_float, positive_int

PAD, BOS, EOS, FIRST_DIGIT = 0, 1, 2, 3
VOCAB = FIRST_DIGIT + 10


def make_data(n, min_len, max_len, rng):
    """src [N, S] (padded), src_lengths [N], tgt [N, S + 1] (reversed digits, EOS, padded)."""
    lengths = rng.integers(min_len, max_len + 1, n)
    src = np.full((n, max_len), PAD, np.int64)
    tgt = np.full((n, max_len + 1), PAD, np.int64)
    for i, L in enumerate(lengths):
        digits = rng.integers(FIRST_DIGIT, VOCAB, L)
        src[i, :L] = digits
        tgt[i, :L] = digits[::-1]
        tgt[i, L] = EOS
    return src, lengths, tgt


def as_text(tokens):
    return "".join(str(t - FIRST_DIGIT) for t in tokens)


def exact_match(result, src, lengths):
    return float(np.mean([np.array_equal(out, src[i, :lengths[i]][::-1])
                          for i, out in enumerate(result.tokens)]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=5)
    p.add_argument("--hidden", type=positive_int, default=64)
    p.add_argument("--train-size", type=positive_int, default=3000)
    p.add_argument("--test-size", type=positive_int, default=200)
    p.add_argument("--min-len", type=positive_int, default=3)
    p.add_argument("--max-len", type=positive_int, default=8)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--beam", type=positive_int, default=4)
    p.add_argument("--lr", type=positive_float, default=5e-3)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()
    if args.max_len < args.min_len:
        p.error(f"argument --max-len: expected at least --min-len ({args.min_len}), got "
                f"{args.max_len}")

    rng = np.random.default_rng(args.seed)
    src, src_len, tgt = make_data(args.train_size, args.min_len, args.max_len, rng)
    test_src, test_len, _ = make_data(args.test_size, args.min_len, args.max_len, rng)

    model = fr.nn.Seq2Seq(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, embed_size=16,
                          hidden_size=args.hidden, bidirectional=True, cell="lstm",
                          attention="bahdanau", pad_idx=PAD, bos_idx=BOS, eos_idx=EOS,
                          seed=args.seed)
    opt = fr.optim.Adam(model.parameters(), lr=args.lr)

    first_loss = None
    for epoch in range(args.epochs):
        order = rng.permutation(args.train_size)
        losses = []
        for start in range(0, args.train_size, args.batch_size):
            idx = order[start:start + args.batch_size]
            S = int(src_len[idx].max())                        # trim the batch's padding
            model.zero_grad()
            loss = model.loss(src[idx, :S], src_len[idx], tgt[idx, :S + 1], teacher_forcing=1.0)
            model.backward()
            fr.optim.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss)
        first_loss = losses[0] if first_loss is None else first_loss
        greedy = model.greedy_decode(test_src, test_len, max_len=args.max_len + 1)
        print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}  "
              f"held-out exact match (greedy) {exact_match(greedy, test_src, test_len):.3f}")

    greedy = model.greedy_decode(test_src, test_len, max_len=args.max_len + 1)
    beam = model.beam_search(test_src, test_len, beam_size=args.beam, max_len=args.max_len + 1)
    i = int(np.argmax(test_len))                               # show a longest held-out input
    print(f"source {as_text(test_src[i, :test_len[i]])} -> greedy {as_text(greedy.tokens[i])}, "
          f"beam {as_text(beam.tokens[i])}")
    att = beam.attention[i]                                    # [output tokens, source length]
    print(f"attention weights {att.shape} (rows: output tokens, columns: source positions); "
          f"argmax per row: {att.argmax(axis=1).tolist()}")
    metrics = {"greedy_exact_match": exact_match(greedy, test_src, test_len),
               f"beam{args.beam}_exact_match": exact_match(beam, test_src, test_len),
               "first_loss": float(first_loss), "final_loss": float(np.mean(losses)),
               "attention_shape": list(att.shape)}
    print(f"held-out exact match: greedy {metrics['greedy_exact_match']:.3f}, beam {args.beam} "
          f"{metrics[f'beam{args.beam}_exact_match']:.3f} (chance ~0)")
    if args.json:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
