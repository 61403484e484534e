//! Property tests: every decomposition reconstructs random well-conditioned
//! matrices in f64 (max abs error < 1e-10) and f32 (< 1e-4).

use bitnet_core::faer::{Mat, MatRef};
use bitnet_core::linalg::{self, Real};
use bitnet_core::{Error, Parallelism};
use proptest::prelude::*;

const SEQ: Parallelism<'static> = Parallelism::Sequential;

fn max_abs_diff<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> f64 {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
    let mut m = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            let d: f64 = (a[(i, j)] - b[(i, j)]).magnitude().into();
            m = m.max(d);
        }
    }
    m
}

fn mul<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> Mat<T> {
    let mut c = Mat::<T>::zeros(a.nrows(), b.ncols());
    for i in 0..a.nrows() {
        for j in 0..b.ncols() {
            let mut s = c[(i, j)];
            for k in 0..a.ncols() {
                s += a[(i, k)] * b[(k, j)];
            }
            c[(i, j)] = s;
        }
    }
    c
}

fn identity<T: Real>(n: usize) -> Mat<T> {
    Mat::<T>::identity(n, n)
}

/// Random `m × n` matrix with entries in [-1, 1].
fn rand_mat(m: usize, n: usize) -> impl Strategy<Value = Mat<f64>> {
    prop::collection::vec(-1.0f64..1.0, m * n)
        .prop_map(move |v| Mat::from_fn(m, n, |i, j| v[i * n + j]))
}

fn rect() -> impl Strategy<Value = Mat<f64>> {
    (1usize..=24, 1usize..=24).prop_flat_map(|(m, n)| rand_mat(m, n))
}

fn square() -> impl Strategy<Value = Mat<f64>> {
    (1usize..=24).prop_flat_map(|n| rand_mat(n, n))
}

/// `R + n I`: diagonally dominant, hence nonsingular and well-conditioned.
fn shifted(r: &Mat<f64>) -> Mat<f64> {
    let n = r.nrows();
    Mat::from_fn(n, n, |i, j| r[(i, j)] + if i == j { n as f64 } else { 0.0 })
}

/// `R Rᵀ / n + I`: symmetric positive definite with eigenvalues in [1, ~n+1].
fn spd(r: &Mat<f64>) -> Mat<f64> {
    let n = r.nrows();
    let rrt = mul(r.as_ref(), r.transpose());
    Mat::from_fn(n, n, |i, j| {
        rrt[(i, j)] / n as f64 + if i == j { 1.0 } else { 0.0 }
    })
}

/// Unit-scale version for f32: `R / n + I` keeps entries O(1).
fn to_f32_shifted(r: &Mat<f64>) -> Mat<f32> {
    let n = r.nrows();
    Mat::from_fn(n, n, |i, j| {
        (r[(i, j)] / n as f64 + if i == j { 1.0 } else { 0.0 }) as f32
    })
}

fn to_f32(a: &Mat<f64>) -> Mat<f32> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] as f32)
}

fn check_svd<T: Real>(a: MatRef<'_, T>) -> f64 {
    let r = linalg::svd(a, SEQ).unwrap();
    for w in r.s.windows(2) {
        assert!(w[0] >= w[1], "singular values must be descending");
    }
    let us = Mat::from_fn(r.u.nrows(), r.u.ncols(), |i, j| r.u[(i, j)] * r.s[j]);
    let k = r.s.len();
    let orth = max_abs_diff(
        mul(r.u.transpose(), r.u.as_ref()).as_ref(),
        identity::<T>(k).as_ref(),
    );
    max_abs_diff(mul(us.as_ref(), r.vt.as_ref()).as_ref(), a).max(orth)
}

fn check_qr<T: Real>(a: MatRef<'_, T>) -> f64 {
    let r = linalg::qr(a, SEQ).unwrap();
    let k = a.nrows().min(a.ncols());
    let orth = max_abs_diff(
        mul(r.q.transpose(), r.q.as_ref()).as_ref(),
        identity::<T>(k).as_ref(),
    );
    max_abs_diff(mul(r.q.as_ref(), r.r.as_ref()).as_ref(), a).max(orth)
}

fn check_chol<T: Real>(a: MatRef<'_, T>) -> f64 {
    let l = linalg::cholesky(a, SEQ).unwrap();
    max_abs_diff(mul(l.as_ref(), l.transpose()).as_ref(), a)
}

fn check_lu<T: Real>(a: MatRef<'_, T>) -> f64 {
    let r = linalg::lu(a, SEQ).unwrap();
    let pa = Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(r.perm[i], j)]);
    max_abs_diff(mul(r.l.as_ref(), r.u.as_ref()).as_ref(), pa.as_ref())
}

fn check_inverse<T: Real>(a: MatRef<'_, T>) -> f64 {
    let inv = linalg::inverse(a, SEQ).unwrap();
    let n = a.nrows();
    max_abs_diff(mul(a, inv.as_ref()).as_ref(), identity::<T>(n).as_ref())
}

fn check_solve<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> f64 {
    let x = linalg::solve(a, b, SEQ).unwrap();
    max_abs_diff(mul(a, x.as_ref()).as_ref(), b)
}

fn check_eigh<T: Real>(a: MatRef<'_, T>) -> f64 {
    let e = linalg::eigh(a, SEQ).unwrap();
    for w in e.w.windows(2) {
        assert!(w[0] <= w[1], "eigenvalues must be ascending");
    }
    let n = a.nrows();
    let vw = Mat::from_fn(n, n, |i, j| e.v[(i, j)] * e.w[j]);
    let orth = max_abs_diff(
        mul(e.v.transpose(), e.v.as_ref()).as_ref(),
        identity::<T>(n).as_ref(),
    );
    max_abs_diff(mul(vw.as_ref(), e.v.transpose()).as_ref(), a).max(orth)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn svd_reconstructs(a in rect()) {
        prop_assert!(check_svd(a.as_ref()) < 1e-10);
        prop_assert!(check_svd(to_f32(&a).as_ref()) < 1e-4);
    }

    #[test]
    fn qr_reconstructs(a in rect()) {
        prop_assert!(check_qr(a.as_ref()) < 1e-10);
        prop_assert!(check_qr(to_f32(&a).as_ref()) < 1e-4);
    }

    #[test]
    fn cholesky_reconstructs(r in square()) {
        let a = spd(&r);
        prop_assert!(check_chol(a.as_ref()) < 1e-10);
        prop_assert!(check_chol(to_f32(&a).as_ref()) < 1e-4);
    }

    #[test]
    fn lu_reconstructs(r in square()) {
        prop_assert!(check_lu(shifted(&r).as_ref()) < 1e-10);
        prop_assert!(check_lu(r.as_ref()) < 1e-10);
        prop_assert!(check_lu(to_f32_shifted(&r).as_ref()) < 1e-4);
    }

    #[test]
    fn inverse_is_inverse(r in square()) {
        prop_assert!(check_inverse(shifted(&r).as_ref()) < 1e-10);
        prop_assert!(check_inverse(to_f32_shifted(&r).as_ref()) < 1e-4);
    }

    #[test]
    fn solve_satisfies_system(r in square(), k in 1usize..4) {
        let n = r.nrows();
        let b = Mat::from_fn(n, k, |i, j| ((i * 7 + j * 3) as f64).sin());
        prop_assert!(check_solve(shifted(&r).as_ref(), b.as_ref()) < 1e-10);
        prop_assert!(check_solve(to_f32_shifted(&r).as_ref(), to_f32(&b).as_ref()) < 1e-4);
    }

    #[test]
    fn eigh_reconstructs(r in square()) {
        let n = r.nrows();
        let sym = Mat::from_fn(n, n, |i, j| r[(i, j)] + r[(j, i)]);
        prop_assert!(check_eigh(sym.as_ref()) < 1e-10);
        let sym32 = Mat::from_fn(n, n, |i, j| (sym[(i, j)] / 2.0) as f32);
        prop_assert!(check_eigh(sym32.as_ref()) < 1e-4);
    }

    #[test]
    fn det_matches_product_of_eigenvalues(r in (1usize..=8).prop_flat_map(|n| rand_mat(n, n))) {
        let a = spd(&r);
        let d = linalg::det(a.as_ref(), SEQ).unwrap();
        let prod: f64 = linalg::eigh(a.as_ref(), SEQ).unwrap().w.iter().product();
        prop_assert!((d - prod).abs() <= 1e-10 * prod.abs().max(1.0));
    }
}

#[test]
fn typed_errors() {
    let sing = Mat::from_fn(4, 4, |i, j| (i + j) as f64); // rank 2
    assert!(matches!(
        linalg::inverse(sing.as_ref(), SEQ),
        Err(Error::Singular { .. })
    ));
    let b = Mat::<f64>::zeros(4, 1);
    assert!(matches!(
        linalg::solve(sing.as_ref(), b.as_ref(), SEQ),
        Err(Error::Singular { .. })
    ));
    let not_pd = Mat::from_fn(3, 3, |i, j| if i == j { -1.0f64 } else { 0.0 });
    assert!(matches!(
        linalg::cholesky(not_pd.as_ref(), SEQ),
        Err(Error::NotPositiveDefinite { .. })
    ));
    let rect = Mat::<f32>::zeros(2, 3);
    for r in [
        linalg::cholesky(rect.as_ref(), SEQ).map(|_| ()),
        linalg::inverse(rect.as_ref(), SEQ).map(|_| ()),
        linalg::det(rect.as_ref(), SEQ).map(|_| ()),
        linalg::eigh(rect.as_ref(), SEQ).map(|_| ()),
    ] {
        assert!(matches!(
            r,
            Err(Error::NotSquare {
                rows: 2,
                cols: 3,
                ..
            })
        ));
    }
}

#[test]
fn pool_matches_sequential() {
    let pool = bitnet_core::build_pool(2).unwrap();
    let a = Mat::from_fn(40, 40, |i, j| {
        ((i * 13 + j * 7) as f64).sin() + if i == j { 40.0 } else { 0.0 }
    });
    let s = linalg::inverse(a.as_ref(), SEQ).unwrap();
    let p = linalg::inverse(a.as_ref(), Parallelism::Pool(&pool)).unwrap();
    assert!(max_abs_diff(s.as_ref(), p.as_ref()) < 1e-12);
}
