"""Train the quality benchmark's teacher once, on the full CIFAR-10 train set, within a time budget.

    python bench/teacher.py --minutes 25 --threads 2
    python bench/teacher.py --minutes 25 --arch bcos/cifar10_resnet20 --optimizer adam --lr 1e-3 \
        --out bench/.cache/teacher-bcos.safetensors      # the B-cos teacher of the e2kd-bcos rows

The number of epochs is chosen from the measured speed of the first steps, so the
one-cycle schedule (linear warm-up, cosine decay to zero) ends exactly when the
budget does. Writes `bench/.cache/teacher.safetensors` and `bench/.cache/teacher.json`
(architecture, epochs, test accuracy on the full test split and on the quality
benchmark's fixed subset). A plain supervised loop: the engine's job is distillation,
and the benchmark needs the same teacher for every row, trained once.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import common

TEACHER_WEIGHTS = common.CACHE_DIR / "teacher.safetensors"
TEACHER_INFO = common.CACHE_DIR / "teacher.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--minutes", type=float, default=25.0, help="Training budget (evaluation comes on top).")
    parser.add_argument("--epochs", type=int, default=None, help="Fixed epochs instead of the budget.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="sgd: Nesterov momentum 0.9, wd 5e-4; adam: no weight decay (the bcos package's B-cos recipe)")
    parser.add_argument("--train-limit", type=int, default=None, help="Use only this many (seeded) training images.")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="Score each epoch on this many seeded test images instead of all 10,000.")
    parser.add_argument("--warmup-steps", type=int, default=200, help="Linear warm-up (at most one epoch).")
    parser.add_argument("--out", default=str(TEACHER_WEIGHTS))
    args = parser.parse_args()
    common.setup_logging(verbose=True)
    common.set_threads(args.threads)

    import torch
    import torch.nn.functional as F

    from core.data import load_dataset
    from core.models import predict_logits
    from core.models import build_model, save_weights, set_input_normalisation
    from core.spec import DatasetSpec

    torch.manual_seed(0)
    data = load_dataset(DatasetSpec(path=str(common.cifar_npz())), seed=0)
    train_x, train_y = data.train_x, data.train_y
    if args.train_limit:
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[: args.train_limit]
        train_x, train_y = train_x[keep], train_y[keep]
    model = build_model(args.arch, data.num_classes, data.in_channels)
    set_input_normalisation(model, data.mean, data.std)  # B-cos models turn the input back into pixels
    model = model.to(memory_format=torch.channels_last)
    if args.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    warmup_steps = min(args.warmup_steps, steps_per_epoch)
    test_x, test_y = data.test_x, data.test_y
    if args.eval_limit:
        keep = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(0))[: args.eval_limit]
        test_x, test_y = test_x[keep], test_y[keep]
    generator = torch.Generator().manual_seed(0)

    def lr_at(step: int, total_steps: int) -> float:
        if step < warmup_steps:
            return args.lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * args.lr * (1 + math.cos(math.pi * min(1.0, progress)))

    def test_accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        logits = predict_logits(model, x.contiguous(memory_format=torch.channels_last), torch.device("cpu"))
        return float((logits.argmax(1) == y).float().mean())

    epochs = args.epochs
    total_steps = (epochs or 1000) * steps_per_epoch
    step, history = 0, []
    started = time.perf_counter()
    epoch = 0
    while epochs is None or epoch < epochs:
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        epoch_start, loss_sum = time.perf_counter(), 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x, y = train_x[idx], train_y[idx]
            flip = torch.rand(len(x), generator=generator) < 0.5  # flips only: crops slow down a short schedule
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            step += 1
            if epochs is None and step == 30:  # choose the epochs that fit the budget from the measured speed
                per_step = (time.perf_counter() - started) / step
                epochs = max(1, int(args.minutes * 60 / (per_step * steps_per_epoch)))
                total_steps = epochs * steps_per_epoch
                common.log.info("%.3f s/step -> %d epochs fit %.0f minutes", per_step, epochs, args.minutes)
        epoch += 1
        seconds = time.perf_counter() - epoch_start
        accuracy = test_accuracy(test_x, test_y)
        history.append({"epoch": epoch, "seconds": round(seconds, 1), "loss": loss_sum / steps_per_epoch,
                        "test_accuracy": accuracy})
        common.log.info("epoch %d/%d: %.0f s, loss %.3f, test top-1 %.4f", epoch, epochs, seconds,
                        loss_sum / steps_per_epoch, accuracy)
        if epochs is None:
            epochs = 1

    model = model.to(memory_format=torch.contiguous_format)
    save_weights(model, common.Path(args.out))
    subset = load_dataset(DatasetSpec(path=str(common.test_subset_npz(2000))), seed=0)
    set_input_normalisation(model, subset.mean, subset.std)  # as a job on the subset would
    info = {
        "arch": args.arch,
        "weights": common.Path(args.out).name,
        "epochs": epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "augment": "horizontal flips",
        "threads": args.threads,
        "train_images": len(train_x),
        "train_minutes": round((time.perf_counter() - started) / 60, 1),
        "test_accuracy": history[-1]["test_accuracy"],
        "test_images": len(test_y),
        "test_accuracy_subset2000": test_accuracy(subset.test_x, subset.test_y),
        "history": history,
        "machine": common.machine_info(),
    }
    info_path = common.Path(args.out).with_suffix(".json")
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k not in ("history", "machine")}, indent=2))


if __name__ == "__main__":
    main()
